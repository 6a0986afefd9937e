"""`mnist-ray sweep` on a real local Ray: Tune trials that land as run rows, faults, resources.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_sweep.py -q

One module-scoped `ray.cluster_utils.Cluster` serves every test: a 2-CPU head (with the
dashboard, for the state API) and a second node declaring one GPU and 2 CPUs, so
fractional GPU requests can be checked where Ray places them. Trials are tiny (1-2 epochs) except where a
test must catch one running; CPU trials say `--gpus-per-trial 0`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading

import numpy as np
import pytest
import ray.tune  # noqa: F401 - the sweep's dependency: a broken install fails here
import torch
from conftest import TUTORIAL_COSTS, make_dataset
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_placement_groups
from reference import COST_TOLERANCE
from test_faults import LOOPBACK_ONLY, MNIST_RAY, _wait, ctrl_c, loopback_cluster, running
from typer.testing import CliRunner

from mnist_ray import cli, data, model, render, sweep
from mnist_ray.config import TrainConfig
from mnist_ray.query import read_rows
from mnist_ray.store import Store
from mnist_ray.train import train

pytestmark = pytest.mark.cluster  # the lane: Ray Tune on a Ray, the CLI as a process

# The MNIST files are what a machine can lack (no internet to fetch them): the tests that
# train on them skip there (conftest's mnist_data), the others run.
needs_mnist = pytest.mark.usefixtures("mnist_data")
TRIAL_ACTOR = "ImplicitFunc"  # the class Tune runs a function trainable in


class Local:
    def __init__(self, cluster: Cluster, gpu_node_id: str):
        self.cluster, self.address, self.gpu_node_id = cluster, cluster.address, gpu_node_id

    def trial_actors(self, detail: bool = False, state: str = "ALIVE") -> list:
        """Tune's trial actors in `state` ("": any but DEAD). Filtered here, not by the state
        API: its limit can apply before its filter, and it answers slowly on a busy machine."""
        actors = list_actors(address=self.address, detail=detail, limit=10_000, timeout=60)
        return [
            a
            for a in actors
            # "ImplicitFunc", or its qualified name "wrap_function.<locals>.ImplicitFunc",
            # depending on how the driver's Ray names a class defined inside a function
            if a.class_name.rsplit(".", 1)[-1] == TRIAL_ACTOR
            and (a.state == state or (not state and a.state != "DEAD"))
        ]

    def cli(self, *args: str, **popen) -> subprocess.Popen:
        return subprocess.Popen(
            [*MNIST_RAY, "sweep", *args, "--address", self.address],
            env=os.environ | LOOPBACK_ONLY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )


@pytest.fixture(scope="module")
def local():
    # Two CPUs beside the GPU: two half-GPU trials fit even while an earlier test's trial
    # process there is still being cleaned up.
    with loopback_cluster({}, gpu_node={"num_cpus": 2, "num_gpus": 1}) as (head, gpu):
        yield Local(head, gpu.node_id)


@pytest.fixture(scope="module")
def train_split(mnist_data):
    return data.load("mnist", "train", mnist_data)


def reference(train_split, **cfg):
    """The same configuration trained directly, in this process: no Ray, no Tune. On one
    thread, as in a 1-CPU Ray worker (OMP_NUM_THREADS=1): a matrix product split over two
    threads rounds the weights' last bits differently (the costs agree either way)."""
    images, labels = train_split
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig(**cfg), images, labels, torch.device("cpu"), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)


def invoke(*args: str):
    result = CliRunner().invoke(cli.app, ["sweep", *args])
    assert result.exit_code == 0, result.output
    return result


# ---- what lands in the store ------------------------------------------------------------------


def test_grid_lands_a_run_per_trial_and_a_sweep_row(local, train_split, tmp_path):
    store = Store(tmp_path / "store")
    result = invoke(
        "--lr", "0.1,0.5", "--seed", "777,1", "--epochs", "2", "--gpus-per-trial", "0",
        "--store", store.location, "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)  # one JSON document on stdout, nothing else
    runs, bad = read_rows(store, "runs")
    assert not bad and len(runs) == 4
    assert {r["sweep_id"] for r in runs} == {summary["sweep_id"]}
    assert {(r["lr"], r["seed"]) for r in runs} == {(0.1, 777), (0.1, 1), (0.5, 777), (0.5, 1)}
    assert all(len(r["epoch_costs"]) == 2 and r["attempts"] == 1 for r in runs)
    assert {(r["model"], r["optimizer"], r["threads"]) for r in runs} == {("softmax", "sgd", 1)}
    (row,) = read_rows(store, "sweeps")[0]
    assert row["status"] == "finished" and sorted(row["finished"]) == sorted(row["trial_ids"])
    assert row["failed"] == [] and row["stopped"] == []
    best = min(runs, key=lambda r: r["epoch_costs"][-1])
    assert row["best_run_id"] == best["run_id"] == summary["trials"][0]["run_id"]
    assert summary["varying"] == ["lr", "seed"]
    costs = [t["final_cost"] for t in summary["trials"]]
    assert costs == sorted(costs)
    assert not list((tmp_path / "store" / "checkpoints").glob("*/*"))  # cleared per run
    assert (tmp_path / "store" / "tune").is_dir()  # Tune's state sits under the store

    # The trial with the tutorial's settings is the tutorial's single run, bit for bit.
    (classic,) = [r for r in runs if (r["lr"], r["seed"]) == (0.1, 777)]
    ref = reference(train_split, epochs=2)
    assert classic["epoch_costs"] == ref.epoch_costs
    assert np.allclose(ref.epoch_costs, TUTORIAL_COSTS[:2], rtol=0, atol=COST_TOLERANCE)
    weights = store.read_weights(classic)
    for name in ("weight", "bias"):
        assert weights[name].tobytes() == ref.weights[name].tobytes()


@needs_mnist
def test_a_sweep_over_models_trains_each_with_its_lab_defaults(local, tmp_path):
    store = Store(tmp_path / "store")
    result = invoke(
        "--model", "softmax,mlp", "--epochs", "1", "--gpus-per-trial", "0",
        "--cpus-per-trial", "2", "--store", store.location, "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    runs = {r["model"]: r for r in read_rows(store, "runs")[0]}
    assert sorted(runs) == ["mlp", "softmax"]
    assert (runs["softmax"]["optimizer"], runs["softmax"]["lr"]) == ("sgd", 0.1)
    assert (runs["mlp"]["optimizer"], runs["mlp"]["lr"]) == ("adam", 0.001)
    assert all(len(r["epoch_costs"]) == 1 and r["threads"] == 2 for r in runs.values())
    assert store.read_weights(runs["mlp"], model.weight_shapes("mlp"))  # the mlp's own weights
    # --json carries each trial's model; the leaderboard shows it first of what varies
    assert sorted(t["model"] for t in summary["trials"]) == ["mlp", "softmax"]
    assert summary["varying"] == ["model", "optimizer", "lr"]
    table, line = render.leaderboard(summary)
    assert [c.header for c in table.columns][2:5] == ["model", "optimizer", "lr"]
    assert sorted(list(table.columns[2].cells)) == ["mlp", "softmax"]
    assert line.startswith("2/2 trials finished")


NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(784, 8)
        self.scores = nn.Linear(8, 10)

    def forward(self, x):
        return self.scores(torch.relu(self.hidden(x.flatten(1))))
"""


def test_a_sweep_over_a_users_model_file_lands_its_run(local, tmp_path, monkeypatch):
    """Tune's trial actors get no runtime_env: the trial builds the model from the file's
    text that the driver read. The spec is relative to the driver's folder, which a trial
    (in its own folder, maybe on another node) does not see."""
    (tmp_path / "net.py").write_text(NET)
    make_dataset(tmp_path / "data", n_train=200)
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "store")
    result = invoke(
        "--model", "net.py:Net", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "1",
        "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"),
        "--gpus-per-trial", "0", "--store", store.location, "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["failed"] == [] and [t["status"] for t in summary["trials"]] == ["finished"]
    (run,) = read_rows(store, "runs")[0]
    assert (run["model"], run["status"], run["model_source"]) == ("net.py:Net", "finished", NET)
    assert run["sweep_id"] == summary["sweep_id"] and len(run["epoch_costs"]) == 1
    shapes = {"hidden.weight": (8, 784), "hidden.bias": (8,), "scores.weight": (10, 8)}
    shapes["scores.bias"] = (10,)
    weights = store.read_weights(run, shapes)  # refused unless the stored ones have them
    assert {k: w.shape for k, w in weights.items()} == shapes


@needs_mnist
def test_leaderboard_shows_only_the_parameters_that_vary(local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative store: the trials must write where the driver reads
    result = invoke("--lr", "0.1,0.5", "--epochs", "1", "--gpus-per-trial", "0", "--store", "rel")
    header = next(line for line in result.stdout.splitlines() if "run_id" in line)
    assert "lr" in header and "final cost" in header
    assert "seed" not in header and "batch" not in header
    assert "2/2 trials finished" in result.stdout
    assert len(list((tmp_path / "rel" / "runs").glob("*.parquet"))) == 2


def test_an_application_error_is_reported_once_and_the_others_go_on(local, tmp_path):
    make_dataset(tmp_path / "data", n_train=200)  # 200 images: a batch of 500 cannot be made
    store = Store(tmp_path / "store")
    result = invoke(
        "--batch-size", "100,500", "--epochs", "1", "--dataset", "fashion-mnist",
        "--data-dir", str(tmp_path / "data"), "--gpus-per-trial", "0",
        "--store", store.location, "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    (ok,) = read_rows(store, "runs")[0]
    assert ok["batch_size"] == 100
    (failed,) = summary["failed"]
    assert "batch_size 500 is larger than the 200 training images" in failed
    assert [t["status"] for t in summary["trials"]] == ["finished", "failed"]
    assert result.stderr.count("Trial failed:") == 1  # reported once: Tune did not retry it


@needs_mnist
def test_early_stop_ends_trials_without_a_row_and_lists_them(local, tmp_path):
    store = Store(tmp_path / "store")
    result = invoke(
        "--lr", "0.001,0.002,0.5,1.0", "--epochs", "4", "--early-stop", "--gpus-per-trial", "0",
        "--store", store.location, "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    runs = {r["run_id"]: r for r in read_rows(store, "runs")[0]}
    (row,) = read_rows(store, "sweeps")[0]
    assert sorted(row["finished"] + row["stopped"]) == sorted(row["trial_ids"])
    assert set(row["finished"]) == set(runs) and runs  # a stopped trial writes no run row
    assert all(len(r["epoch_costs"]) == 4 for r in runs.values())  # finished: every epoch
    assert {t["status"] for t in summary["trials"]} <= {"finished", "stopped"}
    assert json.loads(row["definition"])["early_stop"] is True


# ---- what to try ------------------------------------------------------------------------------


def test_random_search_is_reproducible_from_the_search_seed():
    spec = sweep.definition(lr="0.001..1", seed="0..1000", batch_size="50,100", samples=3)
    first, again = sweep.plan(spec, "sweep-a"), sweep.plan(spec, "sweep-a")
    assert [c for _, c in first] == [c for _, c in again] and len(first) == 6
    assert all(0.001 <= c.lr <= 1 and 0 <= c.seed <= 1000 for _, c in first)
    assert {c.batch_size for _, c in first} == {50, 100}
    other = sweep.plan({**spec, "search_seed": 1}, "sweep-a")
    assert [c.lr for _, c in other] != [c.lr for _, c in first]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--lr", "0.1,x"], "'x' is not a number"),
        (["--lr", "1..0.1"], "the low end must be below the high end"),
        (["--seed", "1,1"], "a value is given twice"),
        (["--batch-size", "0"], "0 is not in 1..60000"),
        (["--gpus-per-trial", "1.5"], "a share of one GPU"),
        (["--resume", "../x"], "not a valid id"),
        (["--model", "softmax,nope"], "'--model': unknown model 'nope'"),
        (["--model", "mlp,mlp"], "'--model': mlp,mlp: a value is given twice"),
        (["--model", "softmax,mlp", "--optimizer", "sgd,adamx"], "unknown optimizer"),
    ],
)
def test_bad_sweep_options_are_one_clear_line(args, needle, tmp_path):
    result = CliRunner().invoke(cli.app, ["sweep", *args, "--store", str(tmp_path)])
    assert result.exit_code == 2, result.output
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # rich's box, unwrapped
    assert needle in text and "Traceback" not in text
    assert not (tmp_path / "sweeps").exists()


# ---- faults -----------------------------------------------------------------------------------


def test_killed_trial_worker_is_retried_to_identical_costs(local, train_split, tmp_path):
    store = Store(tmp_path / "store")
    # Small batches make long epochs: the state API, slow on a busy machine, must show the
    # trial's actor well before the trial ends.
    epochs, batch = 30, 10
    spec = sweep.definition(
        epochs=epochs, batch_size=str(batch), gpus_per_trial=0, checkpoint_every=0
    )
    got = {}
    thread = threading.Thread(
        target=lambda: got.update(summary=sweep.run_sweep(spec, store, None, log=lambda _: None))
    )
    thread.start()
    (actor,) = _wait(local.trial_actors, "the trial's actor in the state API", timeout=180)
    epoch2 = _wait(
        lambda: next((tmp_path / "store" / "checkpoints").glob("run-*/epoch-00000002*"), None),
        "a trial's second epoch",
        every=0.02,
    )
    os.kill(actor.pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the sweep did not finish after the kill"
    (row,) = read_rows(store, "runs")[0]
    assert row["run_id"] == epoch2.parent.name
    assert row["attempts"] == 2  # the first attempt and Tune's restart, counted in the store
    assert row["epoch_costs"] == reference(train_split, epochs=epochs, batch_size=batch).epoch_costs
    assert got["summary"]["failed"] == []


@needs_mnist
def test_ctrl_c_stops_every_trial_and_writes_nothing_partial(local, tmp_path):
    store = tmp_path / "store"
    command = ("--seed", "1,2", "--epochs", "500", "--gpus-per-trial", "0", "--checkpoint-every")
    with running(local.cli(*command, "0", "--store", str(store))) as proc:
        _wait(lambda: len(list(store.glob("checkpoints/run-*/epoch-*"))) >= 2, "two trials")
        stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    _wait(lambda: not local.trial_actors(), "no trial actor left", 30)
    assert list(store.glob("runs/*.parquet")) == []
    assert list(store.glob("weights/*")) == []
    (row,) = read_rows(Store(store), "sweeps")[0]
    assert row["status"] == "interrupted" and row["finished"] == []


@needs_mnist
def test_resume_runs_only_the_missing_trials(local, tmp_path):
    store = Store(tmp_path / "store")
    first = json.loads(
        invoke(
            "--lr", "0.001..1", "--samples", "3", "--search-seed", "7", "--epochs", "1",
            "--gpus-per-trial", "0", "--store", store.location, "--json",
        ).stdout
    )  # fmt: skip
    runs = {r["run_id"]: r for r in read_rows(store, "runs")[0]}
    lost = first["trials"][1]["run_id"]
    for path in (f"runs/{lost}.parquet", f"weights/{lost}.safetensors"):
        os.remove(store.path(path))  # as if the sweep had been interrupted before it
    result = invoke("--resume", first["sweep_id"], "--store", store.location, "--json")
    assert "1 of 3 trials have no run yet" in result.stderr
    assert "Trials ended: 1/1" in result.stderr
    again = {r["run_id"]: r for r in read_rows(store, "runs")[0]}
    assert set(again) == set(runs)
    for run_id, row in runs.items():  # the others untouched, the lost one the same again
        same = ("created_at", "epoch_costs") if run_id != lost else ("epoch_costs", "lr")
        assert all(again[run_id][k] == row[k] for k in same), run_id
    assert again[lost]["created_at"] > runs[lost]["created_at"]
    (row,) = read_rows(store, "sweeps")[0]
    assert row["status"] == "finished" and len(row["finished"]) == 3


@needs_mnist
def test_an_interrupted_trial_resumes_from_its_checkpoint_to_the_same_weights(
    local, train_split, tmp_path
):
    store = tmp_path / "store"
    # Batches of 10 make epochs of seconds: Ctrl-C lands well before the last of 4 epochs.
    epochs, batch = 4, 10
    command = ("--epochs", str(epochs), "--batch-size", str(batch), "--gpus-per-trial", "0")
    proc = local.cli(*command, "--checkpoint-every", "0", "--store", str(store), process_group=0)
    with running(proc):
        epoch2 = _wait(
            lambda: next(store.glob("checkpoints/run-*/epoch-00000002*"), None),
            "the trial's epoch-2 checkpoint",
            timeout=180,
            every=0.02,
        )
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    (sweep_row,) = read_rows(Store(store), "sweeps")[0]
    assert sweep_row["status"] == "interrupted"
    assert f"mnist-ray sweep --resume {sweep_row['sweep_id']}" in stderr
    _wait(lambda: not local.trial_actors(), "no trial actor left", 30)
    run_id = epoch2.parent.name
    assert list(store.glob("runs/*.parquet")) == []  # interrupted: no run yet
    saved = max(int(p.name[6:14]) for p in epoch2.parent.glob("epoch-*.safetensors"))
    assert 2 <= saved < epochs  # the checkpoints outlived the interruption

    result = invoke("--resume", sweep_row["sweep_id"], "--store", str(store), "--json")
    assert f"Trial {run_id} resumes from its checkpoint: epoch {saved} of {epochs}" in result.stderr
    (row,) = read_rows(Store(store), "runs")[0]
    assert row["run_id"] == run_id and row["threads"] == 1
    # The same weights, to the bit, as the same configuration trained without a break
    ref = reference(train_split, epochs=epochs, batch_size=batch)
    assert row["epoch_costs"] == ref.epoch_costs
    _, sha = Store(tmp_path / "ref").write_weights(run_id, ref.weights)
    assert row["weights_sha256"] == sha
    assert json.loads(result.stdout)["status"] == "finished"
    assert not list(store.glob("checkpoints/*/*"))  # cleared once the run is stored


# ---- resources --------------------------------------------------------------------------------


@needs_mnist
def test_fractional_cpu_and_gpu_requests_reach_ray(local, tmp_path):
    store = tmp_path / "store"
    proc = local.cli(
        "--seed", "1,2", "--epochs", "5000", "--gpus-per-trial", "0.5",
        "--cpus-per-trial", "0.5", "--store", str(store),
    )  # fmt: skip
    try:
        seen = []

        def two_trials():  # this sweep's: a share of the GPU (an earlier test's are CPU-only)
            seen[:] = local.trial_actors(detail=True, state="")  # created, or being created
            mine = [a for a in seen if any(k.startswith("GPU") for k in a.required_resources)]
            return len(mine) == 2 and mine

        try:
            actors = _wait(two_trials, "two trial actors", timeout=120)
        except AssertionError:
            said = ctrl_c(proc)
            raise AssertionError(f"{proc.poll()=}, trial actors: {seen}\n{said[-3000:]}") from None
        groups = {
            g.placement_group_id: g
            for g in list_placement_groups(address=local.address, detail=True, limit=10_000)
        }
    finally:
        ctrl_c(proc)  # the 5000-epoch trials are not what this test waits for
    for actor in actors:  # both trials share the one GPU, half each, on the GPU node
        (bundle,) = groups[actor.placement_group_id].bundles
        assert bundle["unit_resources"] == {"CPU": 0.5, "GPU": 0.5}
        assert bundle["node_id"] == local.gpu_node_id  # reserved where the GPU is
        asked = actor.required_resources  # in the placement group's names: CPU_group_<id>, ...
        got = {k.split("_group_")[0]: v for k, v in asked.items() if k.startswith(("CPU", "GPU"))}
        assert got == {"CPU": 0.5, "GPU": 0.5}, asked

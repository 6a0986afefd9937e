"""A user's own nn.Module: `--model FILE.py:NAME` and `--model package.module:NAME`, trained
and evaluated on the session's local Ray and through the Jobs API of a real head; every
bad module is one line before any Ray task.

    PYTHONPATH=. python -m pytest tests/test_user_model.py -q

The models are small (784 -> 16 -> 10) and train one epoch. Their code lives in tmp_path,
outside the project and outside every Ray worker's sys.path: a task can only have it from
the runtime_env the run gave it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import VENV_BIN, client_env, ensure_ray, free_ports
from safetensors.numpy import load_file
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.query import read_rows
from mnist_ray.store import Store

runner = CliRunner()

NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(784, 16)
            self.scores = nn.Linear(16, 10)

        def forward(self, x):
            return self.scores(torch.relu(self.hidden(x.flatten(1))))


    def make():
        return Net()
    """
)
NAMES = ["hidden.weight", "hidden.bias", "scores.weight", "scores.bias"]


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def flat(text: str) -> str:
    """typer's boxed error as one string: the box and its line breaks taken out."""
    return " ".join("".join(c for c in text if c not in "│╭╮╰╯─").split())


def weight_names(store: Path, run_id: str) -> list[str]:
    return sorted(load_file(store / "weights" / f"{run_id}.safetensors"))


# ---- embedded: a file model, evaluated at 1 and 3 shards, and again once the file is gone ----


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    ensure_ray()
    folder = tmp_path_factory.mktemp("mine")
    (folder / "net.py").write_text(NET)
    store = tmp_path_factory.mktemp("store")
    spec = f"{folder}/net.py:Net"
    got = run("submit", "train", "--model", spec, "--epochs", "1", "--store", str(store), "--json")
    assert got.exit_code == 0, got.output
    return folder, store, json.loads(got.stdout)


@pytest.mark.cluster
def test_a_file_model_trains_and_keeps_its_names_and_source(file_run):
    folder, store, row = file_run
    assert row["model"] == f"{folder}/net.py:Net" and row["model_source"] == NET
    assert (row["optimizer"], row["lr"]) == ("adam", 0.001)  # a user model's defaults
    (stored,) = read_rows(Store(str(store)), "runs")[0]
    assert stored["model_source"] == NET
    assert weight_names(store, row["run_id"]) == sorted(NAMES)
    assert row["epoch_costs"][0] < 1.0  # it learned


@pytest.mark.cluster
def test_a_file_model_evaluates_alike_on_1_and_3_shards_then_without_its_file(file_run):
    folder, store, row = file_run
    got = []
    for shards in ("1", "3"):
        result = run("evaluate", "--store", str(store), "--shards", shards, "--json")
        assert result.exit_code == 0, result.output
        got.append(json.loads(result.stdout))
    one, three = got
    for key in ("correct", "total", "confusion", "sample_prediction", "sample_probabilities"):
        assert one[key] == three[key], key
    assert one["total"] == 10_000 and one["correct"] > 8_000

    (folder / "net.py").unlink()  # later: the row's model_source builds it again
    again = run("evaluate", "--run", row["run_id"], "--store", str(store), "--shards", "2")
    assert again.exit_code == 0, again.output
    (latest,) = [e for e in read_rows(Store(str(store)), "evaluations")[0] if e["shards"] == 2]
    assert latest["correct"] == one["correct"]
    for command in (["results", "--json"], ["compare", one["run_id"], one["run_id"]]):
        shown = run(*command, "--store", str(store))
        assert shown.exit_code == 0 and row["run_id"] in shown.stdout, shown.output
    assert run("show", "--store", str(store)).exit_code == 0


@pytest.mark.cluster
def test_package_module_factory_trains_and_evaluates(tmp_path, monkeypatch):
    """pkg.mod:make, importable here only (its folder joins sys.path after Ray started)."""
    ensure_ray()
    package = tmp_path / "src" / "usernets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    store = tmp_path / "store"
    spec = "usernets.small:make"
    got = run("submit", "train", "--model", spec, "--epochs", "1", "--store", str(store), "--json")
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    assert row["model"] == spec and row["model_source"] is None
    assert weight_names(store, row["run_id"]) == sorted(NAMES)
    evaluated = run("evaluate", "--store", str(store), "--shards", "2", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["correct"] > 8_000


# ---- bad modules: one line, exit 2, nothing stored, no Ray contacted -----------------------------

BAD = {
    "missing file": ("", "nope.py:Net", "no such file"),
    "syntax error": ("def broken(:\n", "m.py:Net", "m.py line 1: SyntaxError"),
    "import error": ("import no_such_module_here\n", "m.py:Net", "ModuleNotFoundError"),
    "missing name": (NET, "m.py:Nope", "has no Nope"),
    "not a module": ("Net = 3\n", "m.py:Net", "is an int, not an nn.Module"),
    "forward raises": (
        NET.replace("return self.scores", "raise ValueError('bad forward')\n        return"),
        "m.py:Net",
        "forward on a batch (2, 1, 28, 28) raised ValueError: bad forward",
    ),
    "wrong shape": (NET.replace("nn.Linear(16, 10)", "nn.Linear(16, 5)"), "m.py:Net", "(2, 5)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
@pytest.mark.parametrize("mode", ["host", "jobs"])
def test_a_bad_module_is_one_line_exit_2_and_stores_nothing(case, mode, tmp_path):
    code, name, said = BAD[case]
    if code:
        (tmp_path / name.split(":")[0]).write_text(code)
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}" if mode == "host" else f"http://127.0.0.1:{port}"
    store = tmp_path / "store"
    spec = f"{tmp_path}/{name}"
    got = runner.invoke(
        app, ["submit", "train", "--model", spec, "--store", str(store), "--address", address]
    )
    assert got.exit_code == 2, got.output
    message = flat(got.stderr)
    assert f"Invalid value for '--model': {spec}: " in message and said in message, message
    assert "Traceback" not in got.output and "nothing answers" not in got.output
    assert not store.exists()


def test_weights_that_do_not_fit_the_runs_source_are_one_line(tmp_path):
    """A run row whose model_source builds another shape than its weights (no Ray needed)."""
    from conftest import run_row

    store = Store(str(tmp_path / "store"))
    shapes = [(16, 784), (16,), (10, 16), (10,)]
    weights = dict(zip(NAMES, _arrays(shapes), strict=True))
    uri, sha = store.write_weights("run-mine", weights)
    row = run_row("run-mine", uri, sha, model="net.py:Net")
    wider = NET.replace("16", "32")
    store.write_row("runs", row | {"model_source": wider})
    got = runner.invoke(app, ["evaluate", "--store", str(tmp_path / "store")])
    assert got.exit_code == 1 and "Traceback" not in got.output, got.output
    (line,) = [ln for ln in got.stderr.splitlines() if ln.startswith("Error:")]
    assert "hidden.weight is float32[16, 784], expected float32[32, 784]" in line, line
    assert not list((tmp_path / "store").glob("evaluations/*"))


def _arrays(shapes):
    import numpy as np

    return [np.zeros(s, dtype=np.float32) for s in shapes]


# ---- through the Jobs API of a real head, a path relative to the submitter's folder ----------


def test_jobs_api_ships_a_relative_model_file_with_the_job(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    mine = tmp_path / "mine"
    (mine / "nets").mkdir(parents=True)
    (mine / "nets" / "jobnet.py").write_text(NET)
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)

    def mnist_ray(*args: str, address: str = cluster.dashboard):
        got = subprocess.run(
            [f"{VENV_BIN}/mnist-ray", *args, "--address", address, "--store", str(store)],
            env=env,
            cwd=mine,  # the folder the user submits from: nets/jobnet.py is relative to it
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert got.returncode == 0, got.stderr[-3000:]
        return got

    mnist_ray("submit", "train", "--model", "nets/jobnet.py:Net", "--epochs", "1", "--gpus", "0")
    (row,) = read_rows(Store(str(store)), "runs")[0]
    assert row["model"] == "jobnet.py:Net" and row["model_source"] == NET
    assert weight_names(store, row["run_id"]) == sorted(NAMES)
    evaluated = json.loads(mnist_ray("evaluate", "--shards", "2", "--json").stdout)
    assert evaluated["run_id"] == row["run_id"] and evaluated["correct"] > 8_000
    # and through Ray Client, which uploads the shard tasks' py_modules itself
    client = json.loads(mnist_ray("evaluate", "--json", address=cluster.client).stdout)
    assert client["correct"] == evaluated["correct"]

    # Only the runtime_env carried the code: the head has the file in its job's working_dir
    # and the package made of it in py_modules, both unpacked from the cluster's GCS.
    copies = list(cluster.temp_dir.rglob("jobnet.py"))
    assert copies and all("runtime_resources" in p.parts for p in copies), copies
    # the package made of this file (other tests' models share the session's cluster)
    name = "mnist_ray_user_" + hashlib.sha256(NET.encode()).hexdigest()[:12]
    packages = list(cluster.temp_dir.rglob(f"{name}/__init__.py"))
    assert packages and all(p.read_text() == NET for p in packages), packages
    head_path = subprocess.run(
        [sys.executable, "-c", "import jobnet"],
        env=cluster.env,
        cwd=cluster.temp_dir,
        capture_output=True,
        timeout=60,
    )
    assert head_path.returncode != 0  # not importable from the head's own sys.path

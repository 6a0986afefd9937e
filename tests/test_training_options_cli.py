"""The opt-in training options through the real CLI: a BatchNorm and dropout model with a
constructor argument, AdamW with weight decay, a cosine schedule, a validation split,
--keep best and --patience, embedded and through the Jobs API of a real head; and a run
that diverges, which fails.

    PYTHONPATH=. python -m pytest tests/test_training_options_cli.py -q

The model is small (a BatchNorm1d MLP) and trains 2 epochs on the full training set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import VENV_BIN, client_env
from safetensors.numpy import load_file
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.query import read_rows
from mnist_ray.store import Store

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process
runner = CliRunner()

NET = textwrap.dedent(
    """
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=32, dropout=0.1):
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(784, width), nn.BatchNorm1d(width), nn.ReLU(),
                nn.Dropout(dropout),
            )
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.body(x))
    """
)
OPTIONS = [
    "--model-arg", "width=24", "--optimizer", "adamw", "--lr", "0.003",
    "--weight-decay", "0.01", "--lr-schedule", "cosine", "--val-split", "0.1",
    "--keep", "best", "--patience", "3", "--epochs", "2", "--gpus", "0",
]  # fmt: skip


def check_row(row: dict, model: str) -> None:
    assert row["status"] == "finished" and row["model"] == model
    assert (row["optimizer"], row["weight_decay"], row["lr_schedule"]) == ("adamw", 0.01, "cosine")
    assert json.loads(row["model_args"]) == {"width": 24}
    assert (row["val_split"], row["keep"], row["patience"]) == (0.1, "best", 3)
    assert row["lrs"][0] == 0.003 and row["lrs"][1] == pytest.approx(0.0015)  # cos(pi/2)
    assert len(row["val_costs"]) == len(row["val_accuracies"]) == 2
    assert row["best_epoch"] == 1 + row["val_accuracies"].index(max(row["val_accuracies"]))
    assert row["stopped_early"] is False
    assert min(row["val_accuracies"]) > 0.85


def test_a_batchnorm_model_with_every_option_trains_evaluates_and_lists(tmp_path, monkeypatch):
    (tmp_path / "bnnet.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    got = runner.invoke(
        app,
        ["submit", "train", "--model", "bnnet.py:Net", *OPTIONS, "--store", str(store), "--json"],
    )
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    check_row(row, "bnnet.py:Net")
    for line in ("Epoch: 0001 cost = ", " lr = 0.003000000 val_cost = ", " val_accuracy = 0."):
        assert line in got.stderr
    weights = load_file(store / "weights" / f"{row['run_id']}.safetensors")
    assert weights["body.2.num_batches_tracked"].dtype.name == "int64"
    assert weights["body.1.weight"].shape == (24, 784)  # width=24
    stored = read_rows(Store(str(store)), "runs")[0][0]
    check_row(stored, "bnnet.py:Net")

    (tmp_path / "bnnet.py").unlink()  # evaluated from the row's text and arguments
    evaluated = runner.invoke(app, ["evaluate", "--shards", "2", "--store", str(store), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    scored = json.loads(evaluated.stdout)
    assert scored["accuracy"] > 0.9 and scored["engine"].startswith("onnxruntime")
    assert row["onnx_sha256"] and row["export_failure"] is None  # exported, checked

    listed = runner.invoke(app, ["results", "--store", str(store), "--json"])
    (run,) = json.loads(listed.stdout)["runs"]
    assert (run["lr_schedule"], run["val_split"], run["keep"]) == ("cosine", 0.1, "best")
    assert "lr_step" not in run  # an option no run shown has is no column


def test_a_diverging_run_fails_naming_epoch_and_step(tmp_path):
    store = tmp_path / "store"
    args = ["submit", "train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1000"]
    got = runner.invoke(app, [*args, "--epochs", "2", "--store", str(store), "--json"])
    assert got.exit_code == 1, got.output
    assert got.stdout == ""  # no result, no NaN
    last = got.stderr.strip().splitlines()[-1]
    assert "training diverged at epoch 1, step " in last and ": cost nan" in last, last
    (row,) = read_rows(Store(str(store)), "runs")[0]
    assert row["status"] == "failed" and "diverged at epoch 1, step" in row["failure"]
    assert row["epoch_costs"] == []
    listed = runner.invoke(app, ["results", "--store", str(store), "--json"])
    assert "NaN" not in listed.stdout and json.loads(listed.stdout)["runs"][0]["status"] == "failed"


def test_jobs_api_carries_every_option_and_the_model_argument(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "jobbn.py").write_text(NET)
    (tmp_path / "nets" / "blocks.py").write_text(BLOCKS)  # beside it: goes with the job
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    got = subprocess.run(
        [f"{VENV_BIN}/mnist-ray", "submit", "train", "--model", "nets/jobbn.py:Net", *OPTIONS]
        + ["--address", cluster.dashboard, "--store", str(store), "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    row = json.loads(got.stdout)
    check_row(row, "jobbn.py:Net")
    assert json.loads(row["model_files"]) == {"blocks.py": BLOCKS}
    assert "--model-arg width=24" in got.stderr  # the job's entrypoint, as submitted


BLOCKS = textwrap.dedent(
    """
    from torch import nn


    class Block(nn.Sequential):
        def __init__(self, width):
            super().__init__(nn.Linear(784, width), nn.BatchNorm1d(width), nn.ReLU())
    """
)
FOLDER_NET = textwrap.dedent(
    """
    from torch import nn

    from blocks import Block


    class Net(nn.Module):
        def __init__(self, width=16):
            super().__init__()
            self.block = Block(width)
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.block(x.flatten(1)))
    """
)


def test_a_model_importing_a_module_beside_it_trains_evaluates_and_resumes_after_it_is_gone(
    tmp_path, monkeypatch
):
    """`from blocks import Block`: the file's folder goes to the cluster, and the run keeps
    the files' text, so evaluate and --resume work once the folder is gone."""
    code = tmp_path / "nets"
    (code / ".venv").mkdir(parents=True)
    (code / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (code / ".venv" / "big.py").write_text("x = 1\n")  # a virtualenv's: not shipped
    (code / "blocks.py").write_text(BLOCKS)
    (code / "net.py").write_text(FOLDER_NET)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the code is on no worker's path but shipped
    store = tmp_path / "store"
    args = ["submit", "train", "--model", f"{code}/net.py:Net", "--model-arg", "width=12"]
    got = runner.invoke(app, [*args, "--epochs", "1", "--store", str(store), "--json"])
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    assert json.loads(row["model_files"]) == {"blocks.py": BLOCKS}
    assert row["model_source"] == FOLDER_NET
    import shutil

    shutil.rmtree(code)
    evaluated = runner.invoke(app, ["evaluate", "--store", str(store), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] > 0.85
    assert "blocks" not in sys.modules or "nets" not in str(sys.modules["blocks"].__file__)


def test_a_sweep_of_a_folder_model_with_options_ranks_by_validation_accuracy(tmp_path, monkeypatch):
    code = tmp_path / "nets"
    code.mkdir()
    (code / "blocks.py").write_text(BLOCKS)
    (code / "net.py").write_text(FOLDER_NET)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    got = runner.invoke(
        app,
        ["sweep", "--model", "nets/net.py:Net", "--model-arg", "width=8", "--lr", "0.001,0.01"]
        + ["--optimizer", "adamw", "--weight-decay", "0.01", "--lr-schedule", "cosine"]
        + ["--val-split", "0.1", "--keep", "best", "--epochs", "1", "--gpus-per-trial", "0"]
        + ["--store", str(store), "--json"],
    )
    assert got.exit_code == 0, got.output
    summary = json.loads(got.stdout)
    runs = {r["run_id"]: r for r in read_rows(Store(str(store)), "runs")[0]}
    assert len(runs) == 2 and all(r["status"] == "finished" for r in runs.values())
    for run in runs.values():
        assert (run["optimizer"], run["weight_decay"], run["lr_schedule"]) == (
            "adamw",
            0.01,
            "cosine",
        )
        assert json.loads(run["model_args"]) == {"width": 8} and run["best_epoch"] == 1
        assert json.loads(run["model_files"]) == {"blocks.py": BLOCKS}
    scored = [t["val_accuracy"] for t in summary["trials"]]
    assert scored == sorted(scored, reverse=True)  # best first, by validation accuracy
    best = max(runs.values(), key=lambda r: r["val_accuracies"][0])
    assert summary["best_run_id"] == best["run_id"]

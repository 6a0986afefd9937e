"""The course's other models through the command line, on the session's local Ray:
`models`, `submit train --model`, `evaluate` of the run's model, and `results` naming it.

    PYTHONPATH=. python -m pytest tests/test_cli_models.py -q

A CNN epoch takes 25-45 s on a small CPU, so the end-to-end run here is the MLP's; the
CNN's shard invariance is tested at the function level (tests/test_evaluate.py).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import ensure_ray, stored_run
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.config import MODEL_DEFAULTS
from mnist_ray.store import Store

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def mlp_store(tmp_path_factory):
    """One epoch of the MLP (lab-10-2), trained through `submit train`, once for this module."""
    ensure_ray()
    store = tmp_path_factory.mktemp("store")
    got = run("submit", "train", "--model", "mlp", "--epochs", "1", "--store", str(store), "--json")
    assert got.exit_code == 0, got.output
    return store, json.loads(got.stdout)


def test_models_lists_every_model_with_its_parameters():
    got = run("models", "--json")
    assert got.exit_code == 0, got.output
    models = json.loads(got.stdout)
    assert [m["name"] for m in models] == list(MODEL_DEFAULTS) and len(models) == 7
    by_name = {m["name"]: m for m in models}
    assert by_name["softmax"]["parameters"] == 784 * 10 + 10
    assert by_name["mlp"]["parameters"] == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert by_name["cnn"]["parameters"] == 50186
    assert (by_name["cnn"]["optimizer"], by_name["cnn"]["lr"]) == ("adam", 0.001)
    assert by_name["cnn"]["lab"] == "lab-11-1-mnist_cnn.py"
    table = run("models")
    assert table.exit_code == 0 and "cnn-deep" in table.stdout and "1379557" in table.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--model", "nope"], "--model"),
        (["--optimizer", "adamx"], "--optimizer"),
        (["--cpus", "0"], "--cpus"),
    ],
)
def test_a_bad_model_optimizer_or_cpu_count_exits_2_naming_it(tmp_path, args, option):
    store = tmp_path / "store"
    got = runner.invoke(app, ["submit", "train", *args, "--store", str(store)])
    assert got.exit_code == 2
    assert f"'{option}'" in got.stderr and "Traceback" not in got.output
    assert not store.exists()


@pytest.mark.cluster
def test_submit_train_model_mlp_stores_model_optimizer_and_threads(mlp_store):
    store, row = mlp_store
    assert (row["model"], row["optimizer"], row["lr"], row["threads"]) == ("mlp", "adam", 0.001, 1)
    (stored,) = pq.read_table(store / "runs" / f"{row['run_id']}.parquet").to_pylist()
    assert (stored["model"], stored["optimizer"], stored["threads"]) == ("mlp", "adam", 1)
    assert len(row["epoch_costs"]) == 1 and row["epoch_costs"][0] < 0.5  # it learned


@pytest.mark.cluster
def test_evaluate_runs_the_runs_model_identically_on_1_and_3_shards(mlp_store):
    store, row = mlp_store
    evaluations = []
    for shards in ("1", "3"):
        got = run("evaluate", "--store", str(store), "--shards", shards, "--json")
        assert got.exit_code == 0, got.output
        evaluations.append(json.loads(got.stdout))
    one, three = evaluations
    assert one["run_id"] == three["run_id"] == row["run_id"]
    for key in ("correct", "total", "confusion", "sample_index", "sample_prediction"):
        assert one[key] == three[key], key
    assert one["sample_probabilities"] == three["sample_probabilities"]
    assert one["correct"] > 9000  # the MLP's weights, not a softmax reading of them

    listed = json.loads(run("results", "--store", str(store), "--json").stdout)
    (shown,) = listed["runs"]
    assert (shown["model"], shown["optimizer"]) == ("mlp", "adam")
    assert shown["accuracy"] == three["accuracy"]


def test_a_store_from_before_models_reads_as_softmax_and_sgd(tmp_path):
    """Run rows written before the model, optimizer and threads columns existed."""
    store = Store(str(tmp_path / "store"))
    old = stored_run(store)
    path = tmp_path / "store" / "runs" / f"{old['run_id']}.parquet"
    table = pq.read_table(path)
    table = table.drop_columns(["model", "optimizer", "threads"])
    pq.write_table(table, path)
    new = stored_run(store, model="mlp")  # and one written since, beside it

    got = run("results", "--store", str(tmp_path / "store"), "--json")
    assert got.exit_code == 0, got.output
    runs = {r["run_id"]: r for r in json.loads(got.stdout)["runs"]}
    assert (runs[old["run_id"]]["model"], runs[old["run_id"]]["optimizer"]) == ("softmax", "sgd")
    assert (runs[new["run_id"]]["model"], runs[new["run_id"]]["optimizer"]) == ("mlp", "adam")
    table = run("results", "--store", str(tmp_path / "store"))
    assert "model" in table.stdout and "softmax" in table.stdout and "mlp" in table.stdout


@pytest.mark.cluster
def test_cpus_gives_the_training_task_that_many_cpus_and_torch_threads(tmp_path):
    """--cpus 2 on the session's 2-CPU Ray: the task holds both, and torch runs 2 threads."""
    ensure_ray()
    store = str(tmp_path / "store")
    got = run("submit", "train", "--epochs", "1", "--cpus", "2", "--store", store, "--json")
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    assert (row["model"], row["optimizer"], row["lr"], row["threads"]) == ("softmax", "sgd", 0.1, 2)

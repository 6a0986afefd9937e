"""The CLI through typer's CliRunner on the session's local Ray: success and failure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TUTORIAL_COSTS, client_env, ensure_ray
from typer.testing import CliRunner

from mnist_ray.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tutorial_store(tmp_path_factory):
    """`mnist-ray submit train` with the tutorial's defaults, once for this module; the
    checkpoint interval set past the run's length, so that it writes none however slow."""
    ensure_ray()
    store = tmp_path_factory.mktemp("store")
    result = run("submit", "train", "--store", str(store), "--checkpoint-every", "86400", "--json")
    assert result.exit_code == 0, result.output
    return store, json.loads(result.stdout)


def test_every_command_has_help():
    for command in (["submit", "train"], ["evaluate"], ["results"], ["show"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Example: mnist-ray" in result.stdout, command
    assert "submit" in run("--help").stdout


@pytest.mark.cluster
def test_default_training_stores_the_tutorials_run(tutorial_store):
    store, row = tutorial_store
    assert row["epochs"] == 15 and row["batch_size"] == 100 and row["seed"] == 777
    assert f"{row['epoch_costs'][0]:.9f}" == "0.535150588"
    assert f"{row['epoch_costs'][-1]:.9f}" == "0.274422765"
    assert (
        max(abs(a - b) for a, b in zip(row["epoch_costs"], TUTORIAL_COSTS, strict=False)) < 4.5e-8
    )
    assert row["device"] == "cpu" and row["node_id"]
    import pyarrow.parquet as pq

    stored = pq.read_table(store / "runs" / f"{row['run_id']}.parquet").to_pylist()
    assert stored[0]["epoch_costs"] == row["epoch_costs"]
    assert (store / "weights" / f"{row['run_id']}.safetensors").exists()
    assert not (store / "checkpoints").exists()  # none written: --checkpoint-every 86400


@pytest.mark.cluster
@pytest.mark.parametrize("shards", ["1", "4", "7"])
def test_evaluate_gives_0_9226_and_sample_3757_for_any_shard_count(tutorial_store, shards):
    store, run_row = tutorial_store
    result = run("evaluate", "--store", str(store), "--shards", shards, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["run_id"] == run_row["run_id"] and row["shards"] == int(shards)
    assert (row["correct"], row["total"], row["accuracy"]) == (9226, 10000, 0.9226)
    assert (row["sample_index"], row["sample_label"], row["sample_prediction"]) == (3757, 8, 3)
    assert f"{row['sample_probabilities'][3]:.3f}" == "0.673"


@pytest.mark.cluster
def test_results_and_show_read_the_store(tutorial_store, tmp_path):
    store, run_row = tutorial_store
    run("evaluate", "--store", str(store), "--shards", "2")
    listing = run("results", "--store", str(store), "--json")
    data = json.loads(listing.stdout)
    assert [r["run_id"] for r in data["runs"]] == [run_row["run_id"]]
    assert data["evaluations"] and all(e["accuracy"] == 0.9226 for e in data["evaluations"])
    table = run("results", "--store", str(store))
    assert table.exit_code == 0 and "0.9226" in table.stdout
    png = tmp_path / "sample.png"
    shown = run("show", "--store", str(store), "--png", str(png))
    assert shown.exit_code == 0
    assert "label 8, predicted 3" in shown.stdout and "0.673" in shown.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cluster
def test_evaluate_human_output(tutorial_store):
    store, _ = tutorial_store
    result = run("evaluate", "--store", str(store))
    assert "accuracy 0.9226 (9226/10000) over 4 shard(s)" in result.stdout
    assert "sample 3757: label 8, predicted 3" in result.stdout


@pytest.mark.parametrize(
    "args, option",
    [
        (["submit", "train", "--epochs", "0"], "--epochs"),
        (["submit", "train", "--lr", "-1"], "--lr"),
        (["submit", "train", "--lr", "nan"], "--lr"),
        (["submit", "train", "--batch-size", "0"], "--batch-size"),
        (["submit", "train", "--dataset", "cifar"], "--dataset"),
        (["submit", "train", "--gpus", "2"], "--gpus"),
        (["evaluate", "--shards", "0"], "--shards"),
        (["evaluate", "--shards", "10001"], "--shards"),
        (["evaluate", "--run", "../../etc"], "--run"),
    ],
)
def test_bad_option_values_exit_2_and_write_nothing(tmp_path, args, option):
    store = tmp_path / "store"
    result = runner.invoke(app, [*args, "--store", str(store)])
    assert result.exit_code == 2
    assert option in result.output and "Traceback" not in result.output
    assert not store.exists()


@pytest.mark.cluster
def test_unknown_run_is_one_line_exit_1(tutorial_store):
    store, _ = tutorial_store
    result = runner.invoke(app, ["evaluate", "--store", str(store), "--run", "run-nope"])
    assert result.exit_code == 1
    assert "Error: --run run-nope: no such run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_on_an_empty_store_says_to_train_first(tmp_path):
    result = runner.invoke(app, ["evaluate", "--store", str(tmp_path)])
    assert result.exit_code == 1 and "no runs yet" in result.stderr


def test_show_without_evaluations_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["show", "--store", str(tmp_path)])
    assert result.exit_code == 1 and "no evaluations yet" in result.stderr


def test_results_of_an_empty_store_is_empty(tmp_path):
    result = runner.invoke(app, ["results", "--store", str(tmp_path), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"runs": [], "evaluations": []}


def test_missing_data_is_one_line_and_writes_nothing(tmp_path, ray_local):
    store = tmp_path / "store"
    (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    (tmp_path / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"")
    result = runner.invoke(
        app, ["submit", "train", "--data-dir", str(tmp_path / "data"), "--store", str(store)]
    )
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte: file is empty" in result.stderr
    assert not store.exists()


DRIVER = """
import sys
from mnist_ray.cli import app
for args in (sys.argv[1:] + ["--epochs", "2"], ["evaluate", "--shards", "2"] + sys.argv[3:]):
    try:
        app(args)
    except SystemExit as done:
        assert not done.code, done.code
print("torch imported by the driver:", "torch" in sys.modules)
"""


@pytest.mark.cluster
def test_embedded_ray_from_a_fresh_process_and_no_torch_in_the_driver(tmp_path):
    """Both commands as a user runs them, each starting and stopping its own local Ray; the
    driver process reads data, gathers results and writes the store without importing torch
    (2 s and 500 MB on a small machine), which only the training task needs."""
    env = client_env(tmp_path)
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "submit", "train", "--store", str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "torch imported by the driver: False" in done.stdout, done.stdout
    assert "accuracy" in done.stdout and "over 2 shard(s)" in done.stdout
    assert len(list((store / "runs").glob("*.parquet"))) == 1
    assert len(list((store / "evaluations").glob("*.parquet"))) == 1

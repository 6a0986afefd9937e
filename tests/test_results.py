"""`mnist-ray results`: only the parameters that differ, costs and accuracy beside each run,
filters and sorting in SQL, on a real folder store and on moto's S3."""

from __future__ import annotations

import csv
import io
import json

import boto3
import pytest
from conftest import eval_row, run_row
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.store import Store

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def two_runs(store: Store) -> list[dict]:
    """The issue's case: a default run, and one with --lr 0.01 --epochs 2."""
    runs = []
    for lr, epochs, costs, acc in (
        (0.1, 15, [0.5, 0.3, 0.27], 0.9226),
        (0.01, 2, [0.9, 0.6], 0.85),
    ):
        row = run_row(f"run-lr-{str(lr).replace('.', '_')}", "w", "s", lr=lr, epochs=epochs) | {
            "epoch_costs": costs
        }
        store.write_row("runs", row)
        store.write_row("evaluations", eval_row(row["run_id"], accuracy=acc))
        runs.append(row)
    return runs


def test_results_shows_what_differs_with_costs_and_accuracy(tmp_path):
    two_runs(Store(tmp_path))
    got = invoke("results", "--store", str(tmp_path))
    assert got.exit_code == 0, got.output
    header = next(line for line in got.stdout.splitlines() if "run_id" in line)
    for column in ("epochs", "lr", "last_cost", "best_cost", "accuracy", "device", "seconds"):
        assert column in header, column
    assert "batch_size" not in header and "seed" not in header  # the same in both runs
    assert "batch_size=100" in got.stdout and "seed=777" in got.stdout
    assert "0.270000000" in got.stdout and "0.9226" in got.stdout and "0.8500" in got.stdout
    wide = {"COLUMNS": "220"}  # every parameter, the model and optimizer too: a wide table
    every = runner.invoke(app, ["results", "--store", str(tmp_path), "--all-columns"], env=wide)
    assert "batch_size" in next(line for line in every.stdout.splitlines() if "run_id" in line)


def test_results_filters_sorts_and_limits_in_sql(tmp_path):
    two_runs(Store(tmp_path))
    got = invoke("results", "--store", str(tmp_path), "--where", "lr < 0.1", "--json")
    data = json.loads(got.stdout)
    assert [r["run_id"] for r in data["runs"]] == ["run-lr-0_01"]
    assert [e["run_id"] for e in data["evaluations"]] == ["run-lr-0_01"]
    assert data["runs"][0]["best_cost"] == 0.6 and data["runs"][0]["accuracy"] == 0.85
    ranked = invoke("results", "--store", str(tmp_path), "--sort", "-accuracy", "--csv")
    rows = list(csv.DictReader(io.StringIO(ranked.stdout)))
    assert [r["run_id"] for r in rows] == ["run-lr-0_1", "run-lr-0_01"]
    latest = invoke("results", "--store", str(tmp_path), "--limit", "1", "--json")
    assert [r["run_id"] for r in json.loads(latest.stdout)["runs"]] == ["run-lr-0_01"]


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--where", "lr <<< 1", "<<<"),
        ("--where", "1; drop table runs", "';'"),
        ("--sort", "nope", "no such column"),
    ],
)
def test_results_refuses_a_bad_where_or_sort_with_exit_2(tmp_path, option, value, needle):
    two_runs(Store(tmp_path))
    got = invoke("results", "--store", str(tmp_path), option, value)
    assert got.exit_code == 2 and got.stdout == ""
    assert option in got.stderr and needle in got.stderr and "Traceback" not in got.stderr


def test_results_reads_an_s3_store(s3_server, monkeypatch):
    url, env = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="results-s3")
    two_runs(Store("s3://results-s3/store"))
    got = invoke("results", "--store", "s3://results-s3/store", "--where", "epochs > 5", "--json")
    assert got.exit_code == 0, got.output
    assert [r["accuracy"] for r in json.loads(got.stdout)["runs"]] == [0.9226]


def test_results_suggests_compact_when_row_files_pile_up(tmp_path, monkeypatch):
    from mnist_ray import cli

    two_runs(Store(tmp_path))
    monkeypatch.setattr(cli, "COMPACT_HINT", 1)  # two files each: past a limit of one
    got = invoke("results", "--store", str(tmp_path), "--limit", "1")
    assert got.exit_code == 0 and "mnist-ray compact" in got.stderr
    assert "1 more run(s) match" in got.stdout
    invoke("compact", "--store", str(tmp_path))
    assert "mnist-ray compact" not in invoke("results", "--store", str(tmp_path)).stderr

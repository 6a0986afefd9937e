"""`mnist-ray query` only reads: a write, an ATTACH, a change to a table or a read of a file
outside the store is refused in one line and leaves every file as it was; queries that read
keep working. On a real folder store and on moto's S3."""

from __future__ import annotations

import json
import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import eval_row, run_row
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.store import Store

runner = CliRunner()

REFUSED = [
    "copy (select 1 as x) to '{outside}/copied.csv'",
    "copy runs to 'relative.parquet'",
    "attach '{outside}/other.duckdb' as other",
    "export database '{outside}/exported'",
    "delete from runs",
    "insert into runs (run_id) values ('run-planted')",
    "update runs set lr = 9",
    "create table planted as select 1 as x",
    "drop view runs",
    "set enable_external_access = true",
    "load httpfs",
    "select * from read_csv('/etc/passwd')",
    "select * from read_parquet('{outside}/elsewhere.parquet')",
    "select * from glob('{outside}/*')",
]


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path, monkeypatch):
    """(location, snapshot of every byte in it) with three runs and their evaluations;
    the working directory is a folder of its own, so a relative write would show."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    if request.param == "folder":
        location = str(tmp_path / "store")
    else:
        url, env = request.getfixturevalue("s3_server")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        bucket = f"readonly-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
        location = f"s3://{bucket}/store"
    s = Store(location)
    for k, lr in enumerate((0.1, 0.01, 0.5)):
        row = run_row(f"run-ro{k}", "w", "s", lr=lr)
        s.write_row("runs", row)
        s.write_row("evaluations", eval_row(row["run_id"], accuracy=0.9 - lr))
    return location


def _everything(location: str, tmp_path) -> dict[str, bytes]:
    """Every file in the store and in the test's folder, with its bytes."""
    s = Store(location)
    found = {}
    for table in ("runs", "evaluations", "weights", "sweeps"):
        for relpath in s.list(table):
            found[s.uri(relpath)] = s.read_bytes(relpath)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            found[str(path)] = path.read_bytes()
    return found


def query(location: str, sql: str, *options: str):
    return runner.invoke(app, ["query", sql, "--store", location, *options])


@pytest.mark.parametrize("sql", REFUSED)
def test_anything_but_a_read_of_the_store_is_refused(store, tmp_path, sql):
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"secret": ["not the store's"]}), outside / "elsewhere.parquet")
    before = _everything(store, tmp_path)
    got = query(store, sql.format(outside=outside))
    assert got.exit_code == 1, got.output
    assert got.stdout == "" and "Traceback" not in got.output
    lines = got.stderr.splitlines()
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith("Error: SQL: ") and "refused" in lines[0], got.stderr
    assert "not the store's" not in got.output
    assert _everything(store, tmp_path) == before  # nothing written, nothing removed
    again = query(store, "select count(*) as n from runs", "--json")
    assert json.loads(again.stdout) == [{"n": 3}]


def test_a_change_hidden_in_a_select_changes_nothing(store, tmp_path):
    before = _everything(store, tmp_path)
    got = query(store, "with d as (delete from runs returning *) select count(*) from d")
    assert got.exit_code == 2 and got.stdout == ""
    assert "base table" in got.stderr  # DuckDB's own refusal: the tables are views of Arrow
    assert _everything(store, tmp_path) == before


def test_two_statements_are_refused(store):
    got = query(store, "select 1; select 2")
    assert got.exit_code == 2 and "one statement, not 2" in got.stderr


def test_reads_keep_working(store, tmp_path):
    before = _everything(store, tmp_path)
    joined = query(
        store,
        "select r.run_id, round(e.accuracy, 2) as acc from runs r "
        "join evaluations e using (run_id) where r.lr < 0.2 order by r.lr",
        "--json",
    )
    assert joined.exit_code == 0, joined.output
    assert json.loads(joined.stdout) == [
        {"run_id": "run-ro1", "acc": 0.89},
        {"run_id": "run-ro0", "acc": 0.8},
    ]
    described = query(store, "describe runs", "--json")
    types = {r["column_name"]: r["column_type"] for r in json.loads(described.stdout)}
    assert types["lr"] == "DOUBLE" and types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    summary = query(store, "summarize evaluations", "--json")
    assert summary.exit_code == 0 and "accuracy" in summary.stdout
    plan = query(store, "explain select count(*) from runs")
    assert plan.exit_code == 0 and plan.stdout
    assert _everything(store, tmp_path) == before

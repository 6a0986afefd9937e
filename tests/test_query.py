"""`mnist-ray query` and `compact`: DuckDB over real stores (a folder and moto's S3), and a
compaction that runs while writers write and readers read."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os

import boto3
import pytest
from conftest import eval_row, run_row
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.compact import compact
from mnist_ray.query import read_rows
from mnist_ray.store import Store

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def fill(store: Store, lrs=(0.1, 0.01, 0.5)) -> list[dict]:
    runs = []
    for lr in lrs:
        row = run_row(f"run-lr{str(lr).replace('.', '')}", "w", "s", lr=lr)
        store.write_row("runs", row)
        store.write_row("evaluations", eval_row(row["run_id"], accuracy=0.9 - lr))
        runs.append(row)
    return runs


def test_query_and_compact_have_help():
    for command in ("query", "compact"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example: mnist-ray" in result.stdout, command


def test_query_joins_runs_and_evaluations_as_json_and_csv(tmp_path):
    store = Store(tmp_path)
    fill(store)
    sql = (
        "select r.run_id, r.lr, e.accuracy from runs r join evaluations e using (run_id) "
        "where r.lr < 0.2 order by r.lr"
    )
    got = invoke("query", sql, "--store", str(tmp_path), "--json")
    assert got.exit_code == 0, got.output
    assert [(r["lr"], round(r["accuracy"], 2)) for r in json.loads(got.stdout)] == [
        (0.01, 0.89),
        (0.1, 0.8),
    ]
    rows = list(
        csv.DictReader(io.StringIO(invoke("query", sql, "--store", str(tmp_path), "--csv").stdout))
    )
    assert [r["run_id"] for r in rows] == ["run-lr001", "run-lr01"]
    table = invoke("query", "select count(*) as n from runs", "--store", str(tmp_path))
    assert table.exit_code == 0 and "3" in table.stdout


def test_query_with_bad_sql_is_one_line_and_exit_2(tmp_path):
    fill(Store(tmp_path))
    got = invoke("query", "select nosuchcolumn from runs", "--store", str(tmp_path))
    assert got.exit_code == 2
    assert "nosuchcolumn" in got.stderr and "Traceback" not in got.output
    assert got.stdout == ""


def test_query_reads_an_s3_store(s3_server, monkeypatch):
    url, env = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="query-s3")
    store = Store("s3://query-s3/store")
    fill(store)
    got = invoke(
        "query", "select max(lr) as top from runs", "--store", "s3://query-s3/store", "--json"
    )
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout) == [{"top": 0.5}]
    assert compact(store, "runs")["merged"] == 3
    again = invoke(
        "query", "select count(*) as n from runs", "--store", "s3://query-s3/store", "--json"
    )
    assert json.loads(again.stdout) == [{"n": 3}]


def test_compact_merges_row_files_and_keeps_every_row(tmp_path):
    store = Store(tmp_path)
    runs = fill(store)
    (tmp_path / "runs" / "broken.parquet").write_bytes(b"not parquet")
    got = invoke("compact", "--store", str(tmp_path), "--json")
    assert got.exit_code == 0, got.output
    by_table = {t["table"]: t for t in json.loads(got.stdout)["tables"]}
    assert by_table["runs"]["merged"] == 3 and by_table["runs"]["rows"] == 3
    assert "broken.parquet" in got.stderr  # named, skipped, left where it was
    names = sorted(os.listdir(tmp_path / "runs"))
    assert names[0] == "broken.parquet" and names[1].startswith("compact-") and len(names) == 2
    rows, bad = read_rows(store, "runs")
    assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in runs)
    assert rows[0]["epoch_costs"] == [1.0] and len(bad) == 1
    again = invoke("compact", "--store", str(tmp_path))
    assert again.exit_code == 0, again.output
    # The merged file beside the broken one: one good file, nothing to merge, left as it was.
    assert again.stdout.splitlines() == [
        "runs: 2 file(s), nothing to merge",
        "evaluations: 1 file(s), nothing to merge",
    ]
    assert sorted(os.listdir(tmp_path / "runs")) == names


def test_compact_json_says_zero_rows_when_nothing_was_merged(tmp_path):
    store = Store(tmp_path)
    fill(store, lrs=(0.1,))  # one file per table
    got = invoke("compact", "--store", str(tmp_path), "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["tables"] == [
        {"table": t, "files": 1, "merged": 0, "rows": 0, "bad": [], "uri": None}
        for t in ("runs", "evaluations")
    ]


@pytest.mark.parametrize("command", ["query", "compact", "results", "show"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_store_that_is_not_there_is_refused_in_one_line(tmp_path, command, kind):
    where = tmp_path / "store"
    if kind == "file":
        where.write_text("a file, not a store")
    args = [command, "select count(*) from runs"] if command == "query" else [command]
    got = invoke(*args, "--store", str(where))
    assert got.exit_code == 1 and got.stdout == ""
    expected = "no such store (nothing at that path)" if kind == "missing" else "not a folder"
    assert got.stderr == f"Error: --store {where}: {expected}\n"
    assert [p.name for p in tmp_path.iterdir()] == (["store"] if kind == "file" else [])


def test_compact_of_a_store_that_is_a_file_fails_in_one_line(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    got = invoke("compact", "--store", str(tmp_path))
    assert got.exit_code == 1
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "runs" in lines[0], got.stderr


def test_a_row_in_its_file_and_in_a_merged_file_reads_once(tmp_path):
    """What a reader sees between compact's rename and its deletes."""
    store = Store(tmp_path)
    fill(store)
    saved = {p: p.read_bytes() for p in (tmp_path / "runs").iterdir()}
    compact(store, "runs")
    for path, data in saved.items():
        path.write_bytes(data)  # the small files back, beside the merged one
    assert len(os.listdir(tmp_path / "runs")) == 4
    rows, _ = read_rows(store, "runs")
    assert len(rows) == 3 and len({r["run_id"] for r in rows}) == 3


def _writer(location: str, prefix: str, n: int) -> None:
    store = Store(location)
    for i in range(n):
        store.write_row("runs", run_row(f"run-{prefix}-{i:04d}", "w", "s"))


def _reader(location: str, stop: str) -> None:
    """Reads until told to stop; exits 3 if a row shows twice, 4 if a row seen once vanishes."""
    store, seen = Store(location), set()
    while not os.path.exists(stop):
        ids = [r["run_id"] for r in read_rows(store, "runs")[0]]
        if len(ids) != len(set(ids)):
            os._exit(3)
        if not seen <= set(ids):
            os._exit(4)
        seen = set(ids)


def test_compaction_while_writers_write_and_readers_read(tmp_path):
    location, stop = str(tmp_path / "s"), str(tmp_path / "stop")
    store = Store(location)
    store.check_writable()
    n, writers = 60, 2
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_writer, args=(location, f"w{k}", n)) for k in range(writers)]
    reader = spawn.Process(target=_reader, args=(location, stop))
    for p in [*procs, reader]:
        p.start()
    compactions = 0
    while any(p.is_alive() for p in procs) or compactions < 3:
        before = {f for f in os.listdir(tmp_path / "s" / "runs") if f.startswith("run-")}
        compact(store, "runs")
        compactions += 1
        rows, bad = read_rows(store, "runs")
        ids = [r["run_id"] for r in rows]
        assert bad == [] and len(ids) == len(set(ids)), "a row read twice"
        assert {f.removesuffix(".parquet") for f in before} <= set(ids), "a row lost"
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    open(stop, "w").close()
    reader.join(timeout=120)
    assert reader.exitcode == 0, "the reader saw a row twice (3) or lost one (4)"
    compact(store, "runs")
    rows, bad = read_rows(store, "runs")
    expected = {f"run-w{k}-{i:04d}" for k in range(writers) for i in range(n)}
    assert bad == [] and sorted(r["run_id"] for r in rows) == sorted(expected)
    assert len(os.listdir(tmp_path / "s" / "runs")) == 1 and compactions >= 3


def test_open_store_reads_only_the_rows_asked_for(tmp_path):
    from mnist_ray.query import open_store

    store = Store(tmp_path)
    fill(store)
    con, bad = open_store(store, ["runs"], where={"runs": "lr > 0.2"})
    assert bad == [] and con.sql("select run_id from runs").fetchall() == [("run-lr05",)]


def test_a_listed_file_that_vanished_is_told_apart_from_a_bad_one(tmp_path):
    """What a reader meets when a compaction deletes a file it listed: not a bad file, a
    reason to list again (compact, given its own list, starts over)."""
    from mnist_ray.query import Vanished, connect, load

    store = Store(tmp_path)
    fill(store)
    listed = store.list("runs", ".parquet")
    os.remove(tmp_path / listed[0])
    with pytest.raises(Vanished):
        load(connect(), store, "runs", ["run_id"], files=listed)
    con = connect()
    assert load(con, store, "runs", ["run_id"]) == []  # listed again: two rows, no bad file
    assert con.sql("select count(*) from runs").fetchall() == [(2,)]

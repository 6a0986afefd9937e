"""The Parquet store: real files, read back by pyarrow and DuckDB, written concurrently."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest
from conftest import eval_row

from mnist_ray.query import find_run, matching, read_rows
from mnist_ray.schema import EVALUATIONS
from mnist_ray.store import Store, StoreError, now


def test_row_round_trip_keeps_types(tmp_path):
    store = Store(tmp_path / "s")
    row = eval_row()
    store.write_row("evaluations", row)
    rows, bad = read_rows(store, "evaluations")
    assert bad == [] and len(rows) == 1
    got = rows[0]
    assert got["eval_id"] == row["eval_id"] and got["confusion"] == list(range(100))
    assert got["created_at"] == row["created_at"].replace(microsecond=row["created_at"].microsecond)
    table = ds.dataset(str(tmp_path / "s" / "evaluations"), format="parquet").to_table()
    assert table.schema.equals(EVALUATIONS)


def test_duckdb_reads_the_store_with_a_glob(tmp_path):
    store = Store(tmp_path)
    for acc in (0.5, 0.75, 0.9226):
        store.write_row("evaluations", eval_row(accuracy=acc))
    glob = f"{tmp_path}/evaluations/**/*.parquet"
    [(n, best)] = duckdb.sql(
        f"select count(*), max(accuracy) from read_parquet('{glob}')"
    ).fetchall()
    assert (n, best) == (3, 0.9226)


def test_temporary_files_are_invisible_to_readers(tmp_path):
    store = Store(tmp_path)
    store.write_row("evaluations", eval_row())
    # What a writer killed between write and rename leaves behind:
    (tmp_path / "evaluations" / ".eval-x.parquet.0123.tmp").write_bytes(b"PAR1 half")
    assert len(read_rows(store, "evaluations")[0]) == 1
    assert ds.dataset(str(tmp_path / "evaluations"), format="parquet").count_rows() == 1


def _write_many(location: str, n: int) -> None:
    store = Store(location)
    for _ in range(n):
        store.write_row("evaluations", eval_row())


def test_concurrent_writers_never_collide(tmp_path):
    location = str(tmp_path / "s")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _write_many(location, 5), range(4)))
    procs = [
        mp.get_context("spawn").Process(target=_write_many, args=(location, 5)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows, bad = read_rows(Store(location), "evaluations")
    assert bad == [] and len(rows) == 35 and len({r["eval_id"] for r in rows}) == 35
    assert not [f for f in os.listdir(tmp_path / "s" / "evaluations") if f.startswith(".")]


def test_weights_round_trip_and_refuse_tampering(tmp_path):
    store = Store(tmp_path)
    weights = {"weight": np.ones((10, 784), np.float32), "bias": np.zeros(10, np.float32)}
    uri, sha = store.write_weights("run-1", weights)
    run = {"run_id": "run-1", "weights_sha256": sha}
    got = store.read_weights(run)
    assert np.array_equal(got["weight"], weights["weight"])
    path = tmp_path / "weights" / "run-1.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256 .* does not match run run-1"):
        store.read_weights(run)


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    store = Store(tmp_path)
    _, sha = store.write_weights("run-2", {"weight": np.ones((10, 10), np.float32)})
    with pytest.raises(
        StoreError, match=r"weight is float32\[10, 10\], expected float32\[10, 784\]"
    ):
        store.read_weights({"run_id": "run-2", "weights_sha256": sha})


def test_bad_files_are_reported_and_good_rows_kept(tmp_path):
    store = Store(tmp_path)
    store.write_row("evaluations", eval_row())
    (tmp_path / "evaluations" / "zero.parquet").write_bytes(b"")
    (tmp_path / "evaluations" / "text.parquet").write_text("not parquet")
    rows, bad = read_rows(store, "evaluations")
    assert len(rows) == 1
    assert sorted(p.rsplit("/", 1)[1] for p, _ in bad) == ["text.parquet", "zero.parquet"]


def test_files_from_before_the_memory_columns_still_read(tmp_path):
    """A row written without the columns added later reads back with them null; a file
    missing a column that has always been there is still refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "evaluations").mkdir()
    row = eval_row()
    older = pa.Table.from_pylist([row], schema=EVALUATIONS).drop_columns(["shard_peak_rss_mib"])
    pq.write_table(older, tmp_path / "evaluations" / "old.parquet")
    pq.write_table(older.drop_columns(["accuracy"]), tmp_path / "evaluations" / "bad.parquet")
    rows, bad = read_rows(Store(tmp_path), "evaluations")
    assert [r["eval_id"] for r in rows] == [row["eval_id"]]
    assert rows[0]["shard_peak_rss_mib"] is None and rows[0]["accuracy"] == row["accuracy"]
    assert [(p.rsplit("/", 1)[1], why) for p, why in bad] == [
        ("bad.parquet", "not a evaluations file: missing accuracy")
    ]


def test_find_run_by_prefix_latest_and_unknown(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="no runs yet"):
        find_run(store, None)
    from mnist_ray.schema import RUNS

    base = {name: None for name in RUNS.names}
    for rid in ("run-a1", "run-b2"):
        store.write_row("runs", base | {"run_id": rid, "created_at": now(), "epoch_costs": []})
    assert find_run(store, None)["run_id"] == "run-b2"
    assert find_run(store, "run-a")["run_id"] == "run-a1"
    # Named as the code names it; only the CLI spells it `--run` (test_cli.py).
    with pytest.raises(StoreError, match="^run run-: matches 2 runs") as got:
        find_run(store, "run-")
    assert (got.value.about, got.value.value) == ("run", "run-")
    with pytest.raises(StoreError, match="^RUN run-zz: no such run"):
        find_run(store, "run-zz", about="RUN")


def test_one_prefix_rule_an_exact_id_wins_over_longer_ones():
    rows = [{"run_id": "run-a"}, {"run_id": "run-ab"}, {"run_id": "run-abc"}]
    assert matching(rows, "run_id", "run-a") == [{"run_id": "run-a"}]
    assert matching(rows, "run_id", "run-ab") == [{"run_id": "run-ab"}]
    assert matching(rows, "run_id", "run-abc") == [{"run_id": "run-abc"}]
    assert matching(rows[1:], "run_id", "run-a") == rows[1:]
    assert matching(rows, "run_id", "run-b") == []


def test_unwritable_store_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store folder should be")
    with pytest.raises(StoreError, match="not writable"):
        Store(blocker / "store").check_writable()

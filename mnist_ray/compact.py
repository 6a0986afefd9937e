"""Compaction: a table's row files merged into one file, with no row lost or shown twice.

    from mnist_ray.compact import compact
    compact(Store("mnist-ray-store"), "runs")   # {"merged": 10000, "rows": 10000, ...}

`files` counts the table's files, `merged` the files merged, `rows` the rows written to the
merged file and `uri` names it: 0, 0 and None when there was nothing to merge (fewer than
two good files).

Writers keep writing one file per row under unique names, so they never collide and never
wait for a compaction. A compaction:

1. lists the table's files and reads them (bad files are left where they are, and named);
2. writes their rows, one per id (the newest `updated_at`: a run's final row over its
   `running` one), to a new uniquely named file, through a temporary name and a rename,
   so the merged file appears whole or not at all;
3. deletes exactly the files it read, and nothing else: a file rewritten since it was
   listed (a run's row replaced by its final row) is left where it is.

A row written during the compaction is in a file the listing did not see: it stays. A
reader that lists between steps 2 and 3 sees some rows twice, and keeps one per id
(mnist_ray/query.py). A reader that listed before step 2 and opens a file deleted in step
3 lists again, and then finds the merged file, which existed before any delete. A crash
between 2 and 3 leaves duplicates that readers drop and the next compaction merges. Two
compactions at once each write a merged file and delete inputs the other may have read:
every deleted row already sits in a merged file, so nothing is lost, and the next
compaction folds the two merged files into one.
"""

from __future__ import annotations

import contextlib
import secrets

import pyarrow as pa
import pyarrow.parquet as pq

from mnist_ray.query import Bad, Vanished, connect, load
from mnist_ray.schema import KEYS, SCHEMAS
from mnist_ray.store import Store, StoreError, now

ROW_GROUP = 2048  # rows per Parquet row group in a merged file
ATTEMPTS = 5  # restarts when another compaction took a file this one had listed


def compact(store: Store, table: str) -> dict:
    """Merge the table's row files into one; returns counts and the merged file's URI."""
    for _ in range(ATTEMPTS):
        files = store.list(table, ".parquet")
        if len(files) < 2:
            return _nothing(table, files, [])
        listed = _stamps(store, files)  # before reading: a later rewrite changes the stamp
        con = connect()
        try:
            bad = load(con, store, table, SCHEMAS[table].names, files=files, live=False)
        except Vanished:
            continue  # another compaction merged some of these: list again
        done = {uri for uri, _ in bad}
        inputs = [f for f in files if store.uri(f) not in done]
        if len(inputs) < 2:  # one good file (a merged one, say) beside bad ones: it stays
            return _nothing(table, files, bad)
        order = f"created_at, {KEYS[table]}"
        merged = con.sql(f"SELECT * FROM {table} ORDER BY {order}").to_arrow_table()
        uri = _write(store, table, merged.cast(SCHEMAS[table]))
        now_stamps = _stamps(store, inputs)
        for relpath in inputs:
            if now_stamps.get(relpath) == listed.get(relpath):  # else a newer row: it stays
                _delete(store, relpath)
        return {
            "table": table,
            "files": len(files),
            "merged": len(inputs),
            "rows": merged.num_rows,
            "bad": bad,
            "uri": uri,
        }
    raise StoreError(f"{store.uri(table)}: other compactions kept changing it; try again")


def _nothing(table: str, files: list[str], bad: Bad) -> dict:
    return {"table": table, "files": len(files), "merged": 0, "rows": 0, "bad": bad, "uri": None}


def compact_all(store: Store) -> tuple[list[dict], Bad]:
    """Every table that piles up row files, compacted; a store that isn't there is refused."""
    store.check_exists()
    # Runs and evaluations pile up one file per row; a sweep keeps one file that it
    # rewrites while it runs, so there is nothing to merge (and a merged copy would go stale).
    summaries = [compact(store, t) for t in ("runs", "evaluations")]
    return summaries, [b for s in summaries for b in s["bad"]]


def _stamps(store: Store, relpaths: list[str]) -> dict[str, tuple]:
    """Each file's (modification time, size): a row file rewritten in place (a run's
    final row over its running row, same name) gets a new stamp."""
    try:
        infos = store.fs.get_file_info([store.path(f) for f in relpaths])
    except (OSError, pa.ArrowException):
        return {}  # no stamps to compare: the files read are deleted, as before
    return {f: (i.mtime_ns, i.size) for f, i in zip(relpaths, infos, strict=True) if i.size}


def _write(store: Store, table: str, merged: pa.Table) -> str:
    # Unique, so two compactions never collide; readers order rows by created_at, not name.
    name = f"compact-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(4)}.parquet"
    sink = pa.BufferOutputStream()
    # Row groups of a few thousand rows, in created_at order: a reader that wants one
    # evaluation (the report) skips the other groups by their min/max statistics.
    pq.write_table(merged, sink, row_group_size=ROW_GROUP)
    return store.write_bytes(f"{table}/{name}", sink.getvalue().to_pybytes())


def _delete(store: Store, relpath: str) -> None:
    # Already gone: a concurrent compaction merged it too, and its merged file holds the rows.
    with contextlib.suppress(FileNotFoundError):
        try:
            store.fs.delete_file(store.path(relpath))
        except (OSError, pa.ArrowException) as exc:
            if "not found" in str(exc).lower() or "no such" in str(exc).lower():
                return
            raise StoreError(f"{store.uri(relpath)}: can't delete after merging ({exc})") from None

"""Reading the store: its rows, a run by id or prefix, and SQL, through DuckDB.

    from mnist_ray.query import find_run, read_rows, run_sql
    store = Store("mnist-ray-store")
    rows, bad = read_rows(store, "evaluations")  # every good row, oldest first; files that failed
    run = find_run(store, "run-20261126")          # by id or unique prefix; None: the latest
    table, bad = run_sql(store, "select run_id, lr from runs where lr < 0.1")
    con, bad = open_store(store, ["runs"])         # the tables in DuckDB, for a module's own SQL

A local store is read by DuckDB itself, one scan over the listed files: no union of
schemas while every file has every column (the fast path), `union_by_name` when older
files lack newer columns. An object store (s3://, gs://) is read through pyarrow's
filesystem into Arrow tables that DuckDB then queries: DuckDB reaches S3 only through its
httpfs extension, which it downloads on first use, and the build machines can't download it.

Every table is read once into memory, so a command's queries see one snapshot. Rows are
deduplicated by id, the newest `updated_at` kept: `compact` writes its merged file before
it deletes the files it merged, so a reader that lists in between sees those rows twice,
and a run's `running` row, once compacted, stands beside its newer final row. A `running`
run that nothing runs any more reads as `interrupted` (mnist_ray/liveness.py), and every
run that is not finished gets `checkpoint_epoch`, its newest checkpoint's epoch. A file that vanishes
while it is read was merged by `compact`, whose merged file already exists: the read
starts over. A file that can't be read is named in `bad` and skipped.

A user's SQL (`run_sql`) only reads: it runs over read-only Arrow views of the tables, in
a DuckDB that may touch no file, load no extension and change no setting.
"""

from __future__ import annotations

import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mnist_ray import liveness
from mnist_ray.config import check_id, first_line
from mnist_ray.schema import KEYS, READ_AS, RUN_SETTINGS, SCHEMAS, optional
from mnist_ray.store import Store, StoreError

TABLES = tuple(SCHEMAS)
ATTEMPTS = 20  # re-reads after a file vanished under a compaction, or a bad file was found
MANY_FILES = 64  # past this many files a scan runs on one thread (see _local_scan)
READ_THREADS = 16  # object-store reads are latency-bound: many small GETs in flight

Bad = list[tuple[str, str]]


class QueryError(StoreError):
    """A query's input is wrong: `about` names the parameter (`sql`), `message` says what is
    wrong with it; the CLI refuses it as a bad parameter (exit 2)."""


class Vanished(Exception):
    """A listed file was deleted before it was read (a compaction merged it)."""


def duck_type(t: pa.DataType) -> str:
    """The DuckDB type of a schema column, for casts and all-null columns."""
    if pa.types.is_list(t):
        return duck_type(t.value_type) + "[]"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    names = {
        pa.string(): "VARCHAR",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        pa.uint8(): "UTINYINT",
        pa.binary(): "BLOB",
    }
    return names[t]


def connect(con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A new in-memory database, or another connection to `con`'s, set up for the store."""
    con = duckdb.connect() if con is None else con.cursor()
    con.execute("SET TimeZone = 'UTC'")  # timestamps come back as the store wrote them
    con.execute("SET enable_progress_bar = false")  # stderr is for the commands' own lines
    return con


def open_store(
    store: Store,
    tables=TABLES,
    columns: dict[str, list[str]] | None = None,
    where: dict[str, str] | None = None,
) -> tuple[duckdb.DuckDBPyConnection, Bad]:
    """A DuckDB connection holding each table, and (file, problem) for every bad file.
    `columns` limits what is read per table (the id is always read); `where` keeps only
    the rows that match (DuckDB pushes it into the Parquet scan)."""
    con = connect()

    def one(table: str) -> Bad:
        names = (columns or {}).get(table) or SCHEMAS[table].names
        return load(connect(con), store, table, names, where=(where or {}).get(table))

    # One connection per table, read at once: each scan of many small files runs best on
    # one thread (see _local_scan), so two tables keep two cores busy.
    with ThreadPoolExecutor(max(1, len(tables))) as pool:
        bad = [b for found in pool.map(one, tables) for b in found]
    return con, bad


def load(
    con,
    store: Store,
    table: str,
    names: list[str],
    files: list[str] | None = None,
    where: str | None = None,
    live: bool = True,
) -> Bad:
    """Create DuckDB table `table` from the store's row files (or just `files`, relative
    paths, as `compact` does); returns the bad files. `live`: runs as they stand now
    (liveness.settle); `compact` keeps the rows as written."""
    key = KEYS[table]
    state = ["status", "updated_at"] if table == "runs" else []  # which row is newest
    names = [key, *[n for n in names if n != key]]
    names += [n for n in state if n not in names]
    bad: Bad = []
    for _ in range(ATTEMPTS):
        listed = files if files is not None else store.list(table, ".parquet")
        good = [f for f in listed if store.uri(f) not in {b[0] for b in bad}]
        try:
            if store.is_local:
                _local_scan(con, store, good, table, names, where=where, with_file=False)
                if _incomplete(con, table):  # rare: read again, naming each row's file
                    _local_scan(con, store, good, table, names, where=where, with_file=True)
            else:
                raw = _remote_scan(con, store, good, table, bad)
                _materialize(con, raw, table, names, where)
            bad += _drop_incomplete(con, store, table)
            _dedupe(con, table)
            if table == "runs" and live:
                liveness.settle(con, store)
            return bad
        except Vanished:
            if files is not None:
                raise
        except _BadFile as exc:
            bad.append((store.uri(exc.relpath), exc.problem))
    raise StoreError(f"{store.uri(table)}: files kept changing while being read; try again")


class _BadFile(Exception):
    def __init__(self, relpath: str, problem: str):
        self.relpath, self.problem = relpath, problem


def _local_scan(con, store: Store, relpaths, table: str, names, *, where, with_file: bool) -> None:
    """DuckDB reads the files itself; first without merging schemas (half the time), with
    `union_by_name` when a file lacks a column the first one has. Each row's file name is
    read only when asked for: it costs a fifth more."""
    if not relpaths:
        return _materialize(con, _empty(con, table), table, names, where)
    paths = [store.path(f) for f in relpaths]
    # Measured on 10,000 one-row files (2 cores): 1 thread 1.4 s, 2 threads 1.6 s, 8 2.8 s.
    con.execute(f"SET threads = {1 if len(paths) > MANY_FILES else os.cpu_count() or 1}")
    try:
        rel = con.read_parquet(paths, filename=with_file)
        if set(SCHEMAS[table].names) <= set(rel.columns):
            return _materialize(con, rel, table, names, where)
    except duckdb.Error as exc:
        if "schema mismatch" not in str(exc):
            _explain(exc, store, relpaths)
    try:
        rel = con.read_parquet(paths, filename=with_file, union_by_name=True)
        _materialize(con, rel, table, names, where)
    except duckdb.Error as exc:
        _explain(exc, store, relpaths)
    finally:
        con.execute("RESET threads")


def _explain(exc: duckdb.Error, store: Store, relpaths: list[str]) -> None:
    """Turn DuckDB's error into 'this file vanished' or 'this file is bad'."""
    message = str(exc)
    by_path = {store.path(f): f for f in relpaths}
    named = [by_path[p] for p in re.findall(r"[\"']([^\"']+)[\"']", message) if p in by_path]
    for relpath in named:
        if not os.path.exists(store.path(relpath)):
            raise Vanished() from None
    if named:
        raise _BadFile(named[-1], first_line(exc)) from None
    # No file named: find it the slow way, one footer at a time.
    for relpath in relpaths:
        try:
            pq.read_schema(store.path(relpath))
        except FileNotFoundError:
            raise Vanished() from None
        except (OSError, pa.ArrowException) as bad:
            raise _BadFile(relpath, first_line(bad)) from None
    raise StoreError(f"{store.uri(relpaths[0].split('/')[0])}: {first_line(exc)}") from None


def _remote_scan(con, store: Store, relpaths: list[str], table: str, bad: Bad):
    """Object stores: pyarrow reads every file (many in flight), DuckDB queries the Arrow."""
    schema = SCHEMAS[table]

    def read(relpath: str):
        try:
            got = pq.read_table(store.path(relpath), filesystem=store.fs)
        except FileNotFoundError:
            return "vanished"
        except (OSError, pa.ArrowException) as exc:
            return first_line(exc)
        missing = set(schema.names) - set(got.column_names)
        if required := missing - optional(table):
            return f"not a {table} file: missing {', '.join(sorted(required))}"
        for name in missing:
            got = got.append_column(name, pa.nulls(len(got), schema.field(name).type))
        try:
            got = got.select(schema.names).cast(schema)
        except (pa.ArrowException, ValueError) as exc:
            return first_line(exc)
        return got.append_column("filename", pa.array([relpath] * len(got), pa.string()))

    with ThreadPoolExecutor(READ_THREADS) as pool:
        parts = list(pool.map(read, relpaths))
    if "vanished" in parts:
        raise Vanished()
    for relpath, part in zip(relpaths, parts, strict=True):
        if isinstance(part, str):
            bad.append((store.uri(relpath), part))
    tables = [p for p in parts if not isinstance(p, str)]
    if not tables:
        return _empty(con, table)
    con.register(f"_{table}_arrow", pa.concat_tables(tables))
    return con.sql(f"SELECT * FROM _{table}_arrow")


def _empty(con, table: str) -> duckdb.DuckDBPyRelation:
    schema = SCHEMAS[table]
    cols = ", ".join(f"NULL::{duck_type(f.type)} AS {f.name}" for f in schema)
    return con.sql(f"SELECT {cols}, NULL::VARCHAR AS filename WHERE false")


def _materialize(con, raw, table: str, names: list[str], where: str | None = None) -> None:
    """The table with the schema's types, columns missing from every file as null, and
    a null that has a meaning (schema.READ_AS: an old run's model) as that value."""
    schema, have = SCHEMAS[table], set(raw.columns)

    def column(n: str) -> str:
        kind = duck_type(schema.field(n).type)
        value = f"CAST({n} AS {kind})" if n in have else f"NULL::{kind}"
        if (table, n) in READ_AS:
            value = f"COALESCE({value}, '{READ_AS[table, n]}')"
        return f"{value} AS {n}"

    cols = [column(n) for n in names]
    file = "filename" if "filename" in have else "NULL::VARCHAR"
    raw.create_view(f"_raw_{table}")
    con.execute(
        f"CREATE OR REPLACE TABLE {table} AS SELECT {', '.join(cols)}, {file} AS _file "
        f"FROM _raw_{table} WHERE {where or 'true'}"
    )
    con.execute(f"DROP VIEW _raw_{table}")


def _required_nulls(con, table: str) -> str:
    """SQL true for a row missing a required column that was read."""
    have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    required = [n for n in SCHEMAS[table].names if n not in optional(table) and n in have]
    if table == "runs" and "status" in have:  # an unfinished run holds only its settings
        nulls = [f"{n} IS NULL" if n in RUN_SETTINGS else f"({n} IS NULL AND status = 'finished')"
                 for n in required]  # fmt: skip
        return " OR ".join(nulls) or "false"
    return " OR ".join(f"{n} IS NULL" for n in required) or "false"


def _incomplete(con, table: str) -> bool:
    return bool(
        con.sql(f"SELECT count(*) FROM {table} WHERE {_required_nulls(con, table)}").fetchall()[0][
            0
        ]
    )


def _drop_incomplete(con, store: Store, table: str) -> Bad:
    """Files whose rows lack a required column (not a file of this table): named, dropped."""
    have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    required = [n for n in SCHEMAS[table].names if n not in optional(table) and n in have]
    nulls = _required_nulls(con, table)
    suspects = [
        r[0]
        for r in con.execute(f"SELECT DISTINCT _file FROM {table} WHERE {nulls}").fetchall()
        if r[0] is not None
    ]
    bad = []
    for path in suspects:
        relpath = path if not os.path.isabs(path) else f"{table}/{os.path.basename(path)}"
        try:
            got = pq.read_schema(store.path(relpath), filesystem=store.fs).names
        except (OSError, pa.ArrowException) as exc:
            got, problem = None, first_line(exc)
        if got is not None:
            if not (missing := sorted(set(required) - set(got))):
                continue  # a real row that holds a null: keep it
            problem = f"not a {table} file: missing {', '.join(missing)}"
        bad.append((store.uri(relpath), problem))
        con.execute(f"DELETE FROM {table} WHERE _file = ?", [path])
    return bad


def _dedupe(con, table: str) -> None:
    """One row per id, the newest: a row can be in its own file and in a compacted file for
    a moment, and a compacted run row beside the newer row its run wrote since."""
    have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    newest = "updated_at DESC NULLS LAST, " if "updated_at" in have else ""
    con.execute(
        f"CREATE OR REPLACE TABLE {table} AS SELECT * EXCLUDE (_file) FROM {table} "
        f"QUALIFY row_number() OVER (PARTITION BY {KEYS[table]} ORDER BY {newest}_file) = 1"
    )


def rows(con, table: str) -> list[dict]:
    """A loaded table as dicts, oldest first (the order read_rows promises)."""
    order = f"created_at, {KEYS[table]}"
    return con.sql(f"SELECT * FROM {table} ORDER BY {order}").to_arrow_table().to_pylist()


def read_rows(store: Store, table: str) -> tuple[list[dict], Bad]:
    """Every good row of a table, oldest first, one per id (older files' missing columns
    as null), and (file, problem) for each bad file."""
    con = connect()
    bad = load(con, store, table, SCHEMAS[table].names)
    return rows(con, table), bad


# ---- one row by id ------------------------------------------------------------------------------


def matching(rows: list[dict], key: str, wanted: str) -> list[dict]:
    """The prefix rule: the row whose id is `wanted` or, failing that, every row whose id
    starts with it."""
    return [r for r in rows if r[key] == wanted] or [r for r in rows if r[key].startswith(wanted)]


def find(
    store: Store, table: str, wanted: str | None, about: str, rows: list[dict] | None = None
) -> dict:
    """The one row `wanted` names (see `matching`); the latest row when wanted is None.
    `about` is the parameter the id came from (`run`, `eval_id`, or `RUN`, one of compare's
    arguments): errors carry it, and the CLI spells it as its option (`--run`). `rows` (oldest first) when the caller has read them."""
    if rows is None:
        rows, _ = read_rows(store, table)
    what = table[:-1]  # "run", "evaluation"
    if wanted is None:
        if not rows:
            first = "mnist-ray submit train" if table == "runs" else "mnist-ray evaluate"
            raise StoreError(
                f"no {table} yet; make one with `{first}`", about="store", value=store.location
            )
        return rows[-1]
    check_id(wanted, about)
    key = KEYS[table]
    hits = matching(rows, key, wanted)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        listed = f"mnist-ray results --store {shlex.quote(store.location)}"
        held = f"see `{listed}`" if rows else f"it holds no {table} yet"
        raise StoreError(f"no such {what} in {store.location}; {held}", about=about, value=wanted)
    ids = ", ".join(r[key] for r in hits[:5]) + (", ..." if len(hits) > 5 else "")
    raise StoreError(
        f"matches {len(hits)} {table} ({ids}); give more of the id", about=about, value=wanted
    )


def find_run(
    store: Store, run: str | None, runs: list[dict] | None = None, about: str = "run"
) -> dict:
    """The run with this id (or unique id prefix), or the latest run when run is None."""
    return find(store, "runs", run, about, runs)


# ---- the user's SQL, read-only ----------------------------------------------------------------

# SELECT covers DESCRIBE, SHOW and SUMMARIZE too: DuckDB plans them as one.
READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
SEALED = [
    "temp_directory = ''",  # a large sort fails rather than spilling files into the cwd
    "python_enable_replacements = false",  # no Python variable is a table
    "autoinstall_known_extensions = false",
    "autoload_known_extensions = false",
    "enable_external_access = false",  # no file, URL, ATTACH, COPY or extension
    "lock_configuration = true",  # and no SET that undoes the above
]


def run_sql(store: Store, sql: str) -> tuple[pa.Table, Bad]:
    """The user's SQL over the store's tables (only the tables it names are read). Only a
    query that reads is run: a statement that would write, attach or change anything, or a
    read of a file, is a StoreError naming it; SQL that DuckDB can't run is a QueryError."""
    try:
        with duckdb.connect() as parser:
            kinds = [s.type for s in parser.extract_statements(sql)]
    except duckdb.Error as exc:
        raise QueryError(first_line(exc), about="sql") from None
    if refused := [k.name for k in kinds if k not in READ_ONLY]:
        raise StoreError(
            f"SQL: {refused[0]} refused; `mnist-ray query` only reads "
            "(SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
        )
    if len(kinds) != 1:
        raise QueryError(f"one statement, not {len(kinds)}", about="sql")
    store.check_exists()  # a mistyped path is said so, not taken for an empty store
    wanted = [t for t in TABLES if re.search(rf"\b{t}\b", sql, re.IGNORECASE)]
    con, bad = _sealed(store, wanted)
    try:
        return con.sql(sql).to_arrow_table(), bad
    except duckdb.PermissionException as exc:
        raise StoreError(
            f"SQL: refused; `mnist-ray query` reads the tables {', '.join(TABLES)} and no "
            f"file ({first_line(exc)})"
        ) from None
    except duckdb.Error as exc:
        raise QueryError(first_line(exc), about="sql") from None


def _sealed(store: Store, tables: list[str]) -> tuple[duckdb.DuckDBPyConnection, Bad]:
    """A new database holding the tables as views of Arrow data, which no statement can
    change (a DELETE inside a WITH is refused too), sealed by SEALED."""
    loaded, bad = open_store(store, tables)
    arrow = {t: loaded.sql(f"SELECT * FROM {t}").to_arrow_table() for t in tables}
    loaded.close()  # the Arrow copies are all that is kept
    con = connect()
    for name, table in arrow.items():
        con.register(name, table)
    for setting in SEALED:
        con.execute(f"SET {setting}")
    return con, bad

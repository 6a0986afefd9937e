"""What differs between runs: the `results` listing and `compare`, as plain data.

    from mnist_ray.compare import listing
    view = listing(Store("mnist-ray-store"), where="lr < 0.1", sort="-accuracy", limit=20)
    view.run_columns          # run_id, the parameters that differ, costs, accuracy, ...

DuckDB does the joins and the filters (mnist_ray/query.py loads the store); this module
decides what is worth showing.
"""

from __future__ import annotations

import dataclasses
import re

import duckdb
import pyarrow as pa

from mnist_ray.config import OPT_IN, ConfigError, TrainConfig, first_line
from mnist_ray.query import Bad, find_run, open_store, read_rows
from mnist_ray.schema import RUNS
from mnist_ray.store import Store

# The parameters a run was trained with; sweep_id joins them once the store has it. The
# opt-in settings (--weight-decay, --lr-schedule, --val-split, ...) are listed only where a
# run shown has one (or with --all-columns): the course's runs list as they always have.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
PARAMS = [n for n in _DEFAULTS if n in RUNS.names and n not in OPT_IN] + [
    n for n in ("sweep_id",) if n in RUNS.names
]
METRICS = ["last_cost", "best_cost", "accuracy", "device", "train_seconds"]
EVAL_COLUMNS = ["eval_id", "run_id", "created_at", "dataset", "shards", "accuracy", "correct"]
EVAL_COLUMNS += ["total", "eval_seconds"]
RUN_READ = ["run_id", "created_at", *PARAMS, "device", "epoch_costs", "train_seconds", "failure"]
RUN_READ += OPT_IN
HASHES = ["weights_sha256", "weights_digest"]  # what --all-columns adds to --json and --csv

# One row per run: its parameters, costs, and the accuracy of its latest evaluation; a run
# that is not finished has no final cost (its epoch_costs are the epochs done so far).
RUNS_VIEW = """
SELECT r.run_id, r.created_at, {params},
       CASE WHEN r.status = 'finished' THEN r.epoch_costs[-1] END AS last_cost,
       CASE WHEN r.status = 'finished' THEN list_min(r.epoch_costs) END AS best_cost,
       e.accuracy, e.eval_id, r.device, r.train_seconds,
       r.status, r.checkpoint_epoch, r.failure{opt_in}{hashes}
FROM runs r LEFT JOIN (
    SELECT run_id, arg_max(accuracy, created_at) AS accuracy, arg_max(eval_id, created_at) AS eval_id
    FROM evaluations GROUP BY run_id
) e USING (run_id)
"""


@dataclasses.dataclass
class Listing:
    runs: list[dict]  # every column of RUNS_VIEW: what --json and --csv print
    run_columns: list[str]  # what the table shows
    same: dict  # parameters equal in every run shown, hidden from the table
    evaluations: list[dict]
    bad: Bad
    total: int  # runs that match `where`, shown or not


def sort_key(sort: str | None, columns: list[str]) -> str:
    """`lr` ascending, `-lr` descending; a column that isn't there is a ConfigError."""
    if sort is None:
        return "created_at"
    name = sort.removeprefix("-")
    if name not in columns:
        raise ConfigError("sort", f"{sort}: no such column; choose one of {', '.join(columns)}")
    return f"{name} {'DESC' if sort.startswith('-') else 'ASC'} NULLS LAST, created_at"


def listing(
    store: Store,
    where: str | None = None,
    sort: str | None = None,
    limit: int | None = None,
    all_columns: bool = False,
) -> Listing:
    """Runs filtered by `where` (SQL on the columns of RUNS_VIEW), ordered by `sort`, the
    first `limit` (the latest `limit` when unsorted), and the evaluations of those runs."""
    where = safe_where(where)
    hashes = HASHES if all_columns else []
    con, bad = open_store(
        store, columns={"runs": RUN_READ + hashes, "evaluations": [*EVAL_COLUMNS, "created_at"]}
    )
    params = ", ".join(f"r.{p}" for p in PARAMS)
    view = RUNS_VIEW.format(
        params=params,
        opt_in="".join(f", r.{c}" for c in OPT_IN),
        hashes="".join(f", r.{h}" for h in hashes),
    )
    con.execute(f"CREATE VIEW listing AS {view}")
    columns = [d[0] for d in con.execute("SELECT * FROM listing LIMIT 0").description]
    order = sort_key(sort, columns)
    sql = f"SELECT * FROM listing WHERE ({where or 'true'})"
    if limit is not None and sort is None:  # the latest N, shown oldest first
        sql = f"SELECT * FROM ({sql} ORDER BY created_at DESC LIMIT {int(limit)})"
    sql += f" ORDER BY {order}"
    if limit is not None and sort is not None:
        sql += f" LIMIT {int(limit)}"
    try:
        runs = con.sql(sql).to_arrow_table().to_pylist()
        [(total,)] = con.sql(f"SELECT count(*) FROM listing WHERE ({where or 'true'})").fetchall()
    except duckdb.Error as exc:
        raise ConfigError("where", f"{where}: {first_line(exc)}") from None
    evals = _evaluations(con, runs if (where or limit is not None) else None)
    used = set_options(runs)
    if not all_columns:  # an opt-in setting no run shown has: not a column of this listing
        runs = [{k: v for k, v in r.items() if k not in OPT_IN or k in used} for r in runs]
    params = PARAMS + used  # the table: --all-columns adds the unused ones to --json only
    same = {} if len(runs) < 2 else differing(runs, params)[1]
    shown = [c for c in params if c not in same or all_columns]
    run_columns = ["run_id", "created_at", *shown, *METRICS]
    if any(r["status"] != "finished" for r in runs):
        run_columns.append("status")  # rendered as "interrupted at epoch 3"
    return Listing(
        runs=runs, run_columns=run_columns, same=same, evaluations=evals, bad=bad, total=total
    )


def set_options(runs: list[dict]) -> list[str]:
    """The opt-in settings some run of `runs` was trained with (not null, not the default)."""
    return [c for c in OPT_IN if any(r.get(c) not in (None, _DEFAULTS[c]) for r in runs)]


def _evaluations(con, runs: list[dict] | None) -> list[dict]:
    sql = f"SELECT {', '.join(EVAL_COLUMNS)} FROM evaluations"
    if runs is not None:
        con.register(
            "shown", pa.table({"run_id": pa.array([r["run_id"] for r in runs], pa.string())})
        )
        sql += " WHERE run_id IN (SELECT run_id FROM shown)"
    return con.sql(sql + " ORDER BY created_at, eval_id").to_arrow_table().to_pylist()


def differing(rows: list[dict], columns: list[str]) -> tuple[list[str], dict]:
    """(columns whose values differ among rows, {column: value} for those that don't)."""
    differ, same = [], {}
    for c in columns:
        values = {repr(r.get(c)) for r in rows}
        if len(values) > 1:
            differ.append(c)
        else:
            same[c] = rows[0].get(c) if rows else None
    return differ, same


def safe_where(where: str | None) -> str | None:
    """One predicate, not a second statement."""
    if where is not None and re.search(r";", where):
        raise ConfigError("where", f"{where}: one SQL condition, without ';'")
    return where


# ---- compare RUN RUN ... -----------------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"
TOP_CHANGES = 5  # confusion-matrix cells listed per compared run
EVAL_READ = ["eval_id", "run_id", "created_at", "accuracy", "per_class_accuracy", "confusion"]


def sparkline(values: list[float], low: float, high: float) -> str:
    """A curve in one line of text, on a scale shared by every run compared."""
    span = (high - low) or 1.0
    return "".join(SPARKS[min(7, int((v - low) / span * 8))] for v in values)


def compare_runs(store: Store, run_ids: list[str]) -> dict:
    """Everything `compare` prints, as data: the first run is the one the others are
    measured against. The ids are the command's RUN arguments, and errors say so."""
    every, _ = read_rows(store, "runs")  # once, not once per id
    runs = [find_run(store, r, runs=every, about="RUN") for r in run_ids]
    con, _ = open_store(store, ["evaluations"], columns={"evaluations": EVAL_READ})
    latest = {
        e["run_id"]: e
        for e in con.sql("SELECT * FROM evaluations ORDER BY created_at, eval_id")
        .to_arrow_table()
        .to_pylist()
        if e["run_id"] in {r["run_id"] for r in runs}
    }
    differ, same = differing(runs, PARAMS + set_options(runs))
    costs = [r["epoch_costs"] or [] for r in runs]
    final = [c if r["status"] == "finished" else [] for r, c in zip(runs, costs, strict=True)]
    flat = [c for cs in costs for c in cs]
    low, high = (min(flat), max(flat)) if flat else (0.0, 1.0)
    summary = []
    for r, cs, done in zip(runs, costs, final, strict=True):
        e = latest.get(r["run_id"])
        summary.append(
            {
                "run_id": r["run_id"],
                **{p: r[p] for p in differ},
                "last_cost": done[-1] if done else None,
                "best_cost": min(done) if done else None,
                "accuracy": e["accuracy"] if e else None,
                "eval_id": e["eval_id"] if e else None,
                "curve": sparkline(cs, low, high),
                "status": r["status"],
                "checkpoint_epoch": r.get("checkpoint_epoch"),
            }
        )
    return {
        "runs": summary,
        "differ": differ,
        "same": same,
        "identical_weights": identical_weights(runs),
        "epochs": _epochs_side_by_side(runs, costs),
        "against_first": [
            _deltas(latest.get(runs[0]["run_id"]), latest.get(r["run_id"]), r["run_id"])
            for r in runs[1:]
        ],
    }


def identical_weights(runs: list[dict]) -> list[list[str]]:
    """Groups of two or more of `runs` whose weights are identical (equal weights_digest:
    the tensors alone, not the file), in the order given; runs stored without a digest
    (before it was recorded) are in none."""
    groups: dict[str, list[str]] = {}
    for r in runs:
        if r.get("weights_digest"):
            ids = groups.setdefault(r["weights_digest"], [])
            if r["run_id"] not in ids:
                ids.append(r["run_id"])
    return [ids for ids in groups.values() if len(ids) > 1]


def _epochs_side_by_side(runs: list[dict], costs: list[list[float]]) -> list[dict]:
    longest = max((len(c) for c in costs), default=0)
    return [
        {
            "epoch": i + 1,
            **{
                r["run_id"]: (c[i] if i < len(c) else None)
                for r, c in zip(runs, costs, strict=True)
            },
        }
        for i in range(longest)
    ]


def _deltas(first: dict | None, other: dict | None, run_id: str) -> dict:
    """Per-class accuracy changes and the confusion cells that moved most, other - first."""
    if first is None or other is None:
        return {"run_id": run_id, "per_class": None, "confusion": None}
    per_class = [
        {"class": k, "accuracy_first": a, "accuracy_other": b, "delta": b - a}
        for k, (a, b) in enumerate(
            zip(first["per_class_accuracy"], other["per_class_accuracy"], strict=True)
        )
    ]
    n = int(len(first["confusion"]) ** 0.5)
    cells = [
        {"true": i // n, "predicted": i % n, "first": a, "other": b, "delta": b - a}
        for i, (a, b) in enumerate(zip(first["confusion"], other["confusion"], strict=True))
        if i // n != i % n and a != b  # the mistakes: off the diagonal
    ]
    cells.sort(key=lambda c: (-abs(c["delta"]), c["true"], c["predicted"]))
    return {"run_id": run_id, "per_class": per_class, "confusion": cells[:TOP_CHANGES]}

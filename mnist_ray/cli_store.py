"""The commands that read the store: show, query, compact, compare and report (`results`
lives in cli.py). Plain functions: cli.py registers each on its app, in this order.

mnist-ray show --png sample.png        # the latest evaluation's random sample
mnist-ray query "select run_id, status from runs"
mnist-ray compact                      # each table's row files merged into one
mnist-ray compare RUN RUN              # parameters, costs and accuracy side by side
mnist-ray report --out report.html
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mnist_ray import output, render
from mnist_ray.schema import SCHEMAS
from mnist_ray.store import DEFAULT_STORE, Store
from mnist_ray.ui import (
    CsvOpt,
    JsonOpt,
    StoreOpt,
    emit,
    emit_json,
    err,
    fail,
    friendly,
    spelled,
    styled,
    valid_id,
)

TABLES = ", ".join(f"`{t}`" for t in SCHEMAS)  # what `query` reads: every table of the store


def skipped(bad: list[tuple[str, str]]) -> None:
    """Name each unreadable file on stderr; the command goes on without it."""
    for path, problem in bad:
        err.print(styled("Skipped", "yellow", f"{path}: {problem}"))


def one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="'--csv'")


@friendly("show")
def show(
    eval_id: Annotated[
        str | None, typer.Argument(callback=valid_id, help="Evaluation id (default: the latest).")
    ] = None,
    png: Annotated[
        Path | None, typer.Option(help="Also write the image to this PNG file.", dir_okay=False)
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the evaluation's row as one JSON object.")
    ] = False,
) -> None:
    """Draw an evaluation's random sample in the terminal: label, prediction, probabilities.

    Example: mnist-ray show --png sample.png
    """
    target = Store(store)
    target.check_exists()
    from mnist_ray.query import find

    e = find(target, "evaluations", eval_id, "eval_id")  # one match, as `evaluate --run`
    if as_json:
        emit_json(e)
        return
    emit(render.sample(e))
    if png is not None:
        try:
            render.write_png(render.pixels(e), png, render.caption(e))
        except OSError as exc:
            fail(f"--png {png}: {exc.strerror or exc}")
        err.print(f"wrote {png}")


@friendly("query")
def query(
    sql: Annotated[str, typer.Argument(help=f"SQL over the views {TABLES}.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Ask the store anything in SQL (DuckDB): the tables are `runs`, `evaluations` and
    `sweeps`.

    Example: mnist-ray query "select run_id, lr, epoch_costs[-1] as cost from runs"
    """
    from mnist_ray.query import QueryError, run_sql

    one_format(as_json, as_csv)
    try:
        result, bad = run_sql(Store(store), sql)
    except QueryError as exc:
        raise typer.BadParameter(exc.message, param_hint=f"'{spelled(exc.about, query)}'") from None
    skipped(bad)
    rows = result.to_pylist()
    if as_json:
        emit_json(rows)
    elif as_csv:
        sys.stdout.write(output.as_csv(result.column_names, rows))
    else:
        emit([output.as_table(f"query on {store}", result.column_names, rows)])


@friendly("compact")
def compact(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """Merge each table's row files into one file, so reads stay fast; safe while jobs write.

    Example: mnist-ray compact --store ./mnist-ray-store
    """
    from mnist_ray.compact import compact_all

    summaries, bad = compact_all(Store(store))
    skipped(bad)
    if as_json:
        emit_json({"tables": summaries})
    else:
        emit(render.compacted(summaries))


@friendly("compare")
def compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more run ids or unique prefixes.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Compare runs: parameters that differ, costs per epoch side by side with each curve,
    accuracy, and per-class and confusion changes against the first run.

    Example: mnist-ray compare run-20261126-1802 run-20261126-1815
    """
    from mnist_ray.compare import compare_runs

    if len(runs) < 2:
        raise typer.BadParameter("give at least two runs to compare", param_hint="'RUNS'")
    for r in runs:
        valid_id(r)
    c = compare_runs(Store(store), runs)
    if as_json:
        emit_json(c)
    else:
        emit(render.compared(c))


@friendly("report")
def report(
    runs: Annotated[
        list[str] | None,
        typer.Argument(help="Run ids or unique prefixes (default: the latest 20 runs)."),
    ] = None,
    out_path: Annotated[
        Path, typer.Option("--out", help="The HTML file to write.", dir_okay=False)
    ] = Path("report.html"),
    eval_id: Annotated[
        str | None,
        typer.Option("--eval", callback=valid_id, help="Evaluation to show (default: the latest)."),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write one self-contained HTML page: loss curves, accuracy against parameters, the
    confusion matrix, per-class accuracy, the sample and the misclassified images.

    Example: mnist-ray report --out report.html
    """
    from mnist_ray.report import build

    for r in runs or []:
        valid_id(r)
    page, bad = build(Store(store), runs, eval_id)
    skipped(bad)
    try:
        render.write_file(page, out_path)
    except OSError as exc:
        fail(f"--out {out_path}: {exc.strerror or exc}")
    print(out_path)


COMMANDS = [show, query, compact, compare, report]  # `mnist-ray --help` lists them so

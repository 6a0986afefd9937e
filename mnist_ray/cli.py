"""The command line: parse, call, print (render.py builds what a person sees). Results go
to stdout, progress to stderr.

mnist-ray submit train                 # train on an embedded local Ray
mnist-ray submit train --model cnn     # one of the course's other models (`mnist-ray models`)
mnist-ray evaluate --shards 4          # evaluate the latest run on 4 CPU tasks
mnist-ray results                      # runs and evaluations in the store
mnist-ray show                         # the random sample, drawn in the terminal
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mnist_ray import __version__, helptext, jobs, output, render, ui  # noqa: F401  (helptext)
from mnist_ray.config import CHECKPOINT_EVERY, MAX_SHARDS, EvalConfig, TrainConfig, check_id
from mnist_ray.store import DEFAULT_STORE, Store
from mnist_ray.streams import install_result_marker
from mnist_ray.ui import (
    AddressOpt,
    CheckpointEveryOpt,
    CsvOpt,
    DataDirOpt,
    Dataset,
    Gpus,
    JsonOpt,
    StoreOpt,
    WaitOpt,
    err,
    fail,
    friendly,
    out,
    spelled,
    valid_id,
)

TUTORIAL = TrainConfig()  # the options' defaults: the classic tutorial's, written once
EVAL = EvalConfig()
DATASET = Dataset(TUTORIAL.dataset)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="The classic MNIST softmax regression as a distributed batch job on Ray.",
)
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job: `mnist-ray submit train`.")
app.add_typer(submit_app, name="submit")
app.add_typer(jobs.app, name="jobs")


def _print(pieces: list) -> None:
    for piece in pieces:
        out.print(piece)


def _store_or_submit(ctx: typer.Context, address: str | None, store: str, wait: bool) -> Store:
    """With an http:// address the command is submitted as a Ray job (and followed when
    `wait`), and this exits with the job's outcome; otherwise the store the command uses,
    made absolute when the tasks run on a cluster."""
    if jobs.is_remote(address):
        argv = jobs.command_argv(ctx)
        raise typer.Exit(jobs.submit_cli(address, store, argv, wait=wait, log=err.print))
    return Store(jobs.absolute_store(store, address))


# ---- submit train -----------------------------------------------------------------------------


@submit_app.command("train")
@friendly("submit train")
def submit_train(
    ctx: typer.Context,
    epochs: Annotated[
        int, typer.Option(min=1, max=10_000, help="Passes over the training set.")
    ] = TUTORIAL.epochs,
    batch_size: Annotated[
        int, typer.Option(min=1, max=60_000, help="Images per optimizer step.")
    ] = TUTORIAL.batch_size,
    model: ui.ModelOpt = ui.TUTORIAL_MODEL,
    optimizer: ui.OptimizerOpt = None,
    lr: ui.LrOpt = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed for torch and random.")
    ] = TUTORIAL.seed,
    dataset: Annotated[Dataset, typer.Option(help="Which dataset.")] = DATASET,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    address: AddressOpt = None,
    gpus: ui.GpusOpt = Gpus.auto,
    cpus: ui.CpusOpt = 1,
    checkpoint_every: CheckpointEveryOpt = CHECKPOINT_EVERY,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Train a model (softmax unless --model) on a Ray worker, a GPU if there is one; store it.

    Example: mnist-ray submit train --model cnn --epochs 15 --store ./mnist-ray-store
    """
    cfg = TrainConfig(dataset.value, epochs, batch_size, lr, seed, model, optimizer).validate()
    target = _store_or_submit(ctx, address, store, wait)
    from mnist_ray import data

    images, labels = data.load(cfg.dataset, "train", data_dir)
    target.check_writable()  # fail now, not after 15 epochs
    from mnist_ray.cluster import train_and_store

    row = train_and_store(
        cfg, images, labels, target, address, gpus.value, checkpoint_every, err.print, cpus
    )
    _print([output.as_json(row)] if as_json else render.trained(row))


# ---- evaluate ---------------------------------------------------------------------------------


@app.command()
@friendly("evaluate")
def evaluate(
    ctx: typer.Context,
    run: Annotated[
        str | None,
        typer.Option(callback=valid_id, help="Run id or its unique prefix (default: latest)."),
    ] = None,
    shards: Annotated[
        int, typer.Option(min=1, max=MAX_SHARDS, help="CPU tasks, each a contiguous slice.")
    ] = EVAL.shards,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    address: AddressOpt = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a run on the 10,000 test images, sharded over CPU tasks; store the result.

    Example: mnist-ray evaluate --shards 4
    """
    EvalConfig(shards).validate()
    target = _store_or_submit(ctx, address, store, wait)
    target.check_exists()  # a mistyped path is said so, not taken for an empty store
    from mnist_ray.query import find_run

    found = find_run(target, run)
    from mnist_ray import data
    from mnist_ray.cluster import evaluate_and_store, read_weights

    weights = read_weights(target, found)  # checked against the run's model's shapes

    images, labels = data.load(found["dataset"], "test", data_dir)
    target.check_writable()
    row = evaluate_and_store(found, weights, images, labels, target, address, shards, err.print)
    _print([output.as_json(row)] if as_json else render.evaluated(row))


# ---- sweep ------------------------------------------------------------------------------------


@app.command()
@friendly("sweep")
def sweep(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Models: a list softmax,mlp,cnn.")] = TUTORIAL.model,
    optimizer: Annotated[
        str | None, typer.Option(help="Optimizers: a list sgd,adam (default: each model's lab's).")
    ] = None,
    lr: ui.LrsOpt = None,
    batch_size: Annotated[
        str, typer.Option(help="Batch sizes: a list 50,100 or a range 50..200.")
    ] = str(TUTORIAL.batch_size),
    seed: Annotated[str, typer.Option(help="Seeds: a list 777,1,2 or a range 0..1000.")] = str(
        TUTORIAL.seed
    ),
    epochs: Annotated[
        int, typer.Option(min=1, max=10_000, help="Passes over the training set, every trial.")
    ] = TUTORIAL.epochs,
    dataset: Annotated[Dataset, typer.Option(help="Which dataset.")] = DATASET,
    samples: Annotated[
        int, typer.Option(min=1, help="Trials per grid point, each drawing the ranges anew.")
    ] = 1,
    search_seed: Annotated[
        int, typer.Option(min=0, help="Seed of the range draws: the same seed, the same trials.")
    ] = 0,
    early_stop: Annotated[
        bool, typer.Option("--early-stop", help="Stop trials that trail the others (ASHA).")
    ] = False,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(
            min=0, help="GPU share per trial, e.g. 0.25 (default: 0.25 with a GPU, else 0)."
        ),
    ] = None,
    cpus_per_trial: Annotated[float, typer.Option(min=0, help="CPUs per trial.")] = 1.0,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Evaluate every finished trial (sharded).")
    ] = False,
    shards: Annotated[
        int, typer.Option(min=1, max=MAX_SHARDS, help="With --evaluate: CPU tasks per run.")
    ] = EVAL.shards,
    checkpoint_every: CheckpointEveryOpt = CHECKPOINT_EVERY,
    resume: Annotated[
        str | None,
        typer.Option(help="Run the trials of this sweep that have no run yet.", metavar="SWEEP_ID"),
    ] = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    address: AddressOpt = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Train many configurations as one Ray Tune experiment; each trial is a run in the store.

    Example: mnist-ray sweep --lr 0.01,0.1,0.5 --seed 777,1,2 --epochs 5
    """
    from mnist_ray import sweep as sweeps

    spec = sweeps.definition(
        lr, batch_size, seed, epochs, dataset.value, samples, search_seed, early_stop,
        gpus_per_trial, cpus_per_trial, evaluate, shards, checkpoint_every, model, optimizer,
    )  # fmt: skip
    if resume is not None:
        check_id(resume, "resume")
    target = _store_or_submit(ctx, address, store, wait)
    summary = sweeps.run_sweep(spec, target, address, data_dir, resume, log=err.print)
    _print([output.as_json(summary)] if as_json else render.leaderboard(summary))


@app.command()
@friendly("models")
def models(as_json: JsonOpt = False) -> None:
    """List the models `submit train --model` trains: the course program each reproduces,
    its parameter count, the optimizer and learning rate it trains with by default.

    Example: mnist-ray models --json
    """
    from mnist_ray.model import catalogue

    rows = catalogue()
    _print([output.as_json(rows) if as_json else output.as_table("models", [*rows[0]], rows)])


# ---- results and show -------------------------------------------------------------------------


RESULTS_SHOWN = 50  # runs in the results table when no --limit is given
COMPACT_HINT = 1000  # row files in a table past which results suggests `compact`


@app.command()
@friendly("results")
def results(
    store: StoreOpt = DEFAULT_STORE,
    where: Annotated[
        str | None,
        typer.Option(help='SQL condition on the run columns, e.g. "lr < 0.1 and epochs > 5".'),
    ] = None,
    sort: Annotated[
        str | None, typer.Option(help="Column to sort runs by; -COLUMN for descending.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Show this many runs (the latest, unless --sort).")
    ] = None,
    all_columns: Annotated[
        bool, typer.Option("--all-columns", help="Show parameters equal in every run too.")
    ] = False,
    as_json: JsonOpt = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print the runs as CSV, every column.")
    ] = False,
) -> None:
    """Compare the runs (parameters that differ, last and best cost, latest accuracy) and
    list their evaluations; unreadable files are named, not fatal.

    Example: mnist-ray results --where "lr < 0.1" --sort -accuracy --limit 20
    """
    from mnist_ray.compare import EVAL_COLUMNS, listing

    _one_format(as_json, as_csv)
    target = Store(store)
    target.check_exists()
    if limit is None and not (as_json or as_csv):
        limit = RESULTS_SHOWN  # a table of 100,000 runs helps nobody; scripts get every row
    view = listing(target, where, sort, limit, all_columns)
    _skipped(view.bad)
    for table in ("runs", "evaluations"):
        if (n := len(target.list(table, ".parquet"))) > COMPACT_HINT:
            err.print(f"{table}: {n} files; `mnist-ray compact --store {store}` makes reads fast")
    if as_json:
        print(output.as_json({"runs": view.runs, "evaluations": view.evaluations}))
    elif as_csv:
        sys.stdout.write(output.as_csv(list(view.runs[0]) if view.runs else [], view.runs))
    else:
        _print(render.results(target.location, view, EVAL_COLUMNS))


@app.command()
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
        print(output.as_json(e))
        return
    _print(render.sample(e))
    if png is not None:
        try:
            render.write_png(render.pixels(e), png, render.caption(e))
        except OSError as exc:
            fail(f"--png {png}: {exc.strerror or exc}")
        err.print(f"wrote {png}")


# ---- query and compact ------------------------------------------------------------------------


def _skipped(bad: list[tuple[str, str]]) -> None:
    for path, problem in bad:
        err.print(f"[yellow]Skipped[/] {path}: {problem}", markup=True)


def _one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="'--csv'")


@app.command()
@friendly("query")
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the views `runs` and `evaluations`.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Ask the store anything in SQL (DuckDB): the tables are `runs` and `evaluations`.

    Example: mnist-ray query "select run_id, lr, epoch_costs[-1] as cost from runs"
    """
    from mnist_ray.query import QueryError, run_sql

    _one_format(as_json, as_csv)
    try:
        result, bad = run_sql(Store(store), sql)
    except QueryError as exc:
        raise typer.BadParameter(exc.message, param_hint=f"'{spelled(exc.about, query)}'") from None
    _skipped(bad)
    rows = result.to_pylist()
    if as_json:
        print(output.as_json(rows))
    elif as_csv:
        sys.stdout.write(output.as_csv(result.column_names, rows))
    else:
        out.print(output.as_table(f"query on {store}", result.column_names, rows))


@app.command()
@friendly("compact")
def compact(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """Merge each table's row files into one file, so reads stay fast; safe while jobs write.

    Example: mnist-ray compact --store ./mnist-ray-store
    """
    from mnist_ray.compact import compact_all

    summaries, bad = compact_all(Store(store))
    _skipped(bad)
    _print([output.as_json({"tables": summaries})] if as_json else render.compacted(summaries))


@app.command()
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
    _print([output.as_json(c)] if as_json else render.compared(c))


@app.command()
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
    _skipped(bad)
    try:
        render.write_file(page, out_path)
    except OSError as exc:
        fail(f"--out {out_path}: {exc.strerror or exc}")
    print(out_path)


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """mnist-ray: train and evaluate the classic MNIST softmax regression on Ray."""
    install_result_marker()  # a job submitted by mnist-ray: its result lines framed
    if version:
        print(f"mnist-ray {__version__}")
        raise typer.Exit()

"""The command line: parse, call, print. Results go to stdout, progress to stderr.

mnist-ray submit train                 # train on an embedded local Ray
mnist-ray evaluate --shards 4          # evaluate the latest run on 4 CPU tasks
mnist-ray results                      # runs and evaluations in the store
mnist-ray show                         # the random sample, drawn in the terminal
"""

from __future__ import annotations

import math
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mnist_ray import __version__, helptext, jobs  # noqa: F401  (helptext: --help's format)
from mnist_ray.config import (
    CHECKPOINT_EVERY,
    MAX_SHARDS,
    ConfigError,
    EvalConfig,
    TrainConfig,
    check_id,
)
from mnist_ray.store import DEFAULT_STORE, Store
from mnist_ray.streams import install_result_marker
from mnist_ray.ui import err, fail, friendly, out, to_json

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="The classic MNIST softmax regression as a distributed batch job on Ray.",
)
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job: `mnist-ray submit train`.")
app.add_typer(submit_app, name="submit")
app.add_typer(jobs.app, name="jobs")


class Dataset(StrEnum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


class Gpus(StrEnum):
    auto = "auto"
    none = "0"
    one = "1"


def _positive_finite(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} must be a finite number above 0")
    return value


def _id(value: str | None) -> str | None:
    if value is not None:
        try:
            check_id(value)
        except ConfigError as exc:
            raise typer.BadParameter(exc.message) from None
    return value


StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="MNIST_RAY_STORE",
        help="Result store: a folder or s3:// gs:// file:// URI.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding MNIST/raw/ (default: $MNIST_RAY_DATA, else ~/.cache/mnist-ray).",
        file_okay=False,
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster: auto, HOST:PORT, ray://HOST:10001, or http://HOST:8265 for the "
        "Jobs API. Default: an embedded local Ray.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]
WaitOpt = Annotated[bool, typer.Option(help="With an http:// address: follow the job to its end.")]
CheckpointEveryOpt = Annotated[
    float,
    typer.Option(
        min=0,
        max=86_400,
        help="Seconds between checkpoints a retried worker resumes from; 0: every epoch.",
    ),
]


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
@friendly
def submit_train(
    ctx: typer.Context,
    epochs: Annotated[
        int, typer.Option(min=1, max=10_000, help="Passes over the training set.")
    ] = 15,
    batch_size: Annotated[int, typer.Option(min=1, max=60_000, help="Images per SGD step.")] = 100,
    lr: Annotated[float, typer.Option(callback=_positive_finite, help="SGD learning rate.")] = 0.1,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="Seed for torch and random.")
    ] = 777,
    dataset: Annotated[Dataset, typer.Option(help="Which dataset.")] = Dataset.mnist,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    address: AddressOpt = None,
    gpus: Annotated[
        Gpus, typer.Option(help="auto: a GPU if the cluster has one; 1: require one; 0: CPU.")
    ] = Gpus.auto,
    checkpoint_every: CheckpointEveryOpt = CHECKPOINT_EVERY,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Train the softmax regression on a Ray worker (a GPU when there is one), store the run.

    Example: mnist-ray submit train --epochs 15 --store ./mnist-ray-store
    """
    cfg = TrainConfig(dataset.value, epochs, batch_size, lr, seed).validate()
    target = _store_or_submit(ctx, address, store, wait)
    from mnist_ray import data

    images, labels = data.load(cfg.dataset, "train", data_dir)
    target.check_writable()  # fail now, not after 15 epochs
    from mnist_ray.cluster import train_and_store

    row = train_and_store(
        cfg, images, labels, target, address, gpus.value, checkpoint_every, log=err.print
    )
    if as_json:
        print(to_json(row))
    else:
        out.print(
            f"run {row['run_id']}: {row['epochs']} epochs on {row['device']} "
            f"(node {row['node_id'][:12]}) in {row['train_seconds']:.2f} s, "
            f"final cost {row['epoch_costs'][-1]:.9f}, peak memory {_peak(row)}"
        )
        out.print(f"weights {row['weights_uri']}")


def _peak(row: dict) -> str:
    """The training task's peak memory: its process's RSS, and torch's GPU peak if it had one."""
    text = f"{row['peak_rss_mib']:.0f} MiB"
    if row.get("gpu_peak_mib") is not None:
        text += f" + {row['gpu_peak_mib']:.0f} MiB on the GPU"
    return text


# ---- evaluate ---------------------------------------------------------------------------------


@app.command()
@friendly
def evaluate(
    ctx: typer.Context,
    run: Annotated[
        str | None,
        typer.Option(callback=_id, help="Run id or its unique prefix (default: latest)."),
    ] = None,
    shards: Annotated[
        int, typer.Option(min=1, max=MAX_SHARDS, help="CPU tasks, each a contiguous slice.")
    ] = 4,
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
    weights = target.read_weights(found)
    from mnist_ray import data
    from mnist_ray.cluster import evaluate_and_store

    images, labels = data.load(found["dataset"], "test", data_dir)
    target.check_writable()
    row = evaluate_and_store(found, weights, images, labels, target, address, shards, err.print)
    s = {k: row[f"sample_{k}"] for k in ("index", "label", "prediction", "probabilities")}
    if as_json:
        print(to_json(row))
    else:
        p = s["probabilities"]
        out.print(
            f"evaluation {row['eval_id']} of run {row['run_id']}: accuracy {row['accuracy']:.4f} "
            f"({row['correct']}/{row['total']}) over {shards} shard(s)"
        )
        out.print(
            f"sample {s['index']}: label {s['label']}, predicted {s['prediction']} "
            f"(p={p[s['prediction']]:.3f}; p[{s['label']}]={p[s['label']]:.3f})"
        )


# ---- sweep ------------------------------------------------------------------------------------


@app.command()
@friendly
def sweep(
    ctx: typer.Context,
    lr: Annotated[
        str, typer.Option(help="Learning rates: a list 0.01,0.1,0.5 or a range 0.001..1.")
    ] = "0.1",
    batch_size: Annotated[
        str, typer.Option(help="Batch sizes: a list 50,100 or a range 50..200.")
    ] = "100",
    seed: Annotated[str, typer.Option(help="Seeds: a list 777,1,2 or a range 0..1000.")] = "777",
    epochs: Annotated[
        int, typer.Option(min=1, max=10_000, help="Passes over the training set, every trial.")
    ] = 15,
    dataset: Annotated[Dataset, typer.Option(help="Which dataset.")] = Dataset.mnist,
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
    ] = 4,
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
        gpus_per_trial, cpus_per_trial, evaluate, shards, checkpoint_every,
    )  # fmt: skip
    if resume is not None:
        check_id(resume, "--resume")
    target = _store_or_submit(ctx, address, store, wait)
    summary = sweeps.run_sweep(spec, target, address, data_dir, resume, log=err.print)
    if as_json:
        print(to_json(summary))
        return
    _leaderboard(summary)


def _leaderboard(summary: dict) -> None:
    """Best first; only the parameters that vary, then the outcome of each trial."""
    trials, varying = summary["trials"], summary["varying"]
    table = Table(title=f"sweep {summary['sweep_id']}", title_justify="left")
    for col in ("#", "run_id", *varying, "final cost", "seconds", "peak MiB"):
        table.add_column(col, justify="left" if col == "run_id" else "right")
    evaluated = any(t["accuracy"] is not None for t in trials)
    if evaluated:
        table.add_column("accuracy", justify="right")
    if any(t["status"] != "finished" for t in trials):
        table.add_column("status")
    for rank, t in enumerate(trials, 1):
        cells = [str(rank), t["run_id"], *(f"{t[n]:g}" for n in varying)]
        cells += [
            f"{t['final_cost']:.9f}" if t["final_cost"] is not None else "-",
            f"{t['train_seconds']:.2f}" if t["train_seconds"] is not None else "-",
            f"{t['peak_rss_mib']:.0f}" if t["peak_rss_mib"] is not None else "-",
        ]
        if evaluated:
            cells.append(f"{t['accuracy']:.4f}" if t["accuracy"] is not None else "-")
        if len(table.columns) > len(cells):
            cells.append(t["status"] + (f": {t['error']}" if t["error"] else ""))
        table.add_row(*cells)
    out.print(table)
    done = sum(t["status"] == "finished" for t in trials)
    best = f", best {summary['best_run_id']}" if summary["best_run_id"] else ""
    out.print(
        f"{done}/{len(trials)} trials finished in {summary['wall_seconds']:.1f} s{best}; "
        f"status {summary['status']}"
    )


# ---- results and show -------------------------------------------------------------------------


RESULTS_SHOWN = 50  # runs in the results table when no --limit is given
COMPACT_HINT = 1000  # row files in a table past which results suggests `compact`


@app.command()
@friendly
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
    from mnist_ray import output
    from mnist_ray.compare import caption, listing
    from mnist_ray.query import QueryError

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="'--csv'")
    target = Store(store)
    target.check_exists()
    if limit is None and not (as_json or as_csv):
        limit = RESULTS_SHOWN  # a table of 100,000 runs helps nobody; scripts get every row
    try:
        view = listing(target, where, sort, limit, all_columns)
    except QueryError as exc:
        raise typer.BadParameter(exc.message, param_hint=f"'{exc.about}'") from None
    _skipped(view.bad)
    for table in ("runs", "evaluations"):
        if (n := len(target.list(table, ".parquet"))) > COMPACT_HINT:
            err.print(f"{table}: {n} files; `mnist-ray compact --store {store}` makes reads fast")
    if as_json:
        print(output.as_json({"runs": view.runs, "evaluations": view.evaluations}))
        return
    if as_csv:
        sys.stdout.write(output.as_csv(list(view.runs[0]) if view.runs else [], view.runs))
        return
    table = output.as_table(f"runs in {target.location}", view.run_columns, view.runs)
    hidden = view.total - len(view.runs)
    more = f"{hidden} more run(s) match: --limit N, or --json/--csv for all" if hidden else ""
    table.caption = "\n".join(t for t in (caption(view.same), more) if t)
    table.caption_justify = "left"
    out.print(table)
    from mnist_ray.compare import EVAL_COLUMNS

    title = f"evaluations in {target.location}"
    out.print(output.as_table(title, EVAL_COLUMNS, view.evaluations))


@app.command()
@friendly
def show(
    eval_id: Annotated[
        str | None, typer.Argument(callback=_id, help="Evaluation id (default: the latest).")
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
    import numpy as np

    target = Store(store)
    target.check_exists()
    from mnist_ray.query import find

    e = find(target, "evaluations", eval_id, "EVAL_ID")  # one match, as `evaluate --run`
    if as_json:
        print(to_json(e))
        return
    pixels = np.asarray(e["sample_pixels"], dtype=np.uint8).reshape(28, 28)
    out.print(f"evaluation {e['eval_id']}, test image {e['sample_index']}")
    for line in draw(pixels):
        out.print(line)
    out.print(f"label {e['sample_label']}, predicted {e['sample_prediction']}")
    for digit, p in enumerate(e["sample_probabilities"]):
        bar = "#" * round(p * 40)
        out.print(f"  {digit}  {p:6.3f}  {bar}")
    if png is not None:
        write_png(pixels, png, f"label {e['sample_label']}, predicted {e['sample_prediction']}")
        err.print(f"wrote {png}")


def draw(pixels) -> list[str]:
    """Two image rows per text line, each pixel column two characters wide: any terminal."""
    shades = " .:-=+*#%@"
    lines = []
    for r in range(0, pixels.shape[0], 2):
        top, bottom = pixels[r], pixels[r + 1]
        lines.append(
            "".join(
                shades[min(9, int(max(a, b)) * 10 // 256)] * 2
                for a, b in zip(top, bottom, strict=False)
            )
        )
    return lines


def write_png(pixels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.imshow(pixels, cmap="Greys", interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
    except OSError as exc:
        fail(f"--png {path}: {exc.strerror or exc}")


# ---- query and compact ------------------------------------------------------------------------

CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV (a header line, then rows).")]


def _skipped(bad: list[tuple[str, str]]) -> None:
    for path, problem in bad:
        err.print(f"[yellow]Skipped[/] {path}: {problem}", markup=True)


def _print_rows(title: str, columns: list[str], rows: list[dict], as_json: bool, as_csv: bool):
    from mnist_ray import output

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="'--csv'")
    if as_json:
        print(output.as_json(rows))
    elif as_csv:
        sys.stdout.write(output.as_csv(columns, rows))
    else:
        out.print(output.as_table(title, columns, rows))


@app.command()
@friendly
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

    try:
        result, bad = run_sql(Store(store), sql)
    except QueryError as exc:
        raise typer.BadParameter(exc.message, param_hint=f"'{exc.about}'") from None
    _skipped(bad)
    _print_rows(f"query on {store}", result.column_names, result.to_pylist(), as_json, as_csv)


@app.command()
@friendly
def compact(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """Merge each table's row files into one file, so reads stay fast; safe while jobs write.

    Example: mnist-ray compact --store ./mnist-ray-store
    """
    from mnist_ray.compact import compact_all

    target = Store(store)
    summaries, bad = compact_all(target)
    _skipped(bad)
    if as_json:
        print(to_json({"tables": summaries}))
        return
    for s in summaries:
        if s["merged"]:
            out.print(f"{s['table']}: {s['merged']} files -> 1 ({s['rows']} rows) {s['uri']}")
        else:
            out.print(f"{s['table']}: {s['files']} file(s), nothing to merge")


@app.command()
@friendly
def compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more run ids or unique prefixes.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Compare runs: parameters that differ, costs per epoch side by side with each curve,
    accuracy, and per-class and confusion changes against the first run.

    Example: mnist-ray compare run-20261126-1802 run-20261126-1815
    """
    from mnist_ray import output
    from mnist_ray.compare import compare_runs

    if len(runs) < 2:
        raise typer.BadParameter("give at least two runs to compare", param_hint="'RUNS'")
    for r in runs:
        _id(r)
    c = compare_runs(Store(store), runs)
    if as_json:
        print(output.as_json(c))
        return
    ids = [r["run_id"] for r in c["runs"]]
    columns = ["run_id", *c["differ"], "last_cost", "best_cost", "accuracy", "curve"]
    out.print(output.as_table("runs compared", columns, c["runs"]))
    if c["same"]:
        out.print("same in every run: " + ", ".join(f"{k}={v}" for k, v in c["same"].items()))
    epochs = [
        {"epoch": e["epoch"]} | {i: output.cell("cost", e[i]) for i in ids} for e in c["epochs"]
    ]
    out.print(output.as_table("cost per epoch", ["epoch", *ids], epochs))
    for d in c["against_first"]:
        if d["per_class"] is None:
            out.print(f"{d['run_id']} vs {ids[0]}: no evaluation of both; run `mnist-ray evaluate`")
            continue
        title = f"per-class accuracy, {d['run_id']} vs {ids[0]}"
        rows = [row | {"delta": f"{row['delta']:+.4f}"} for row in d["per_class"]]
        columns = ["class", "accuracy_first", "accuracy_other", "delta"]
        out.print(output.as_table(title, columns, rows))
        out.print(f"largest confusion changes, {d['run_id']} vs {ids[0]}:")
        for cell in d["confusion"]:
            out.print(
                f"  true {cell['true']} -> predicted {cell['predicted']}: "
                f"{cell['first']} -> {cell['other']} ({cell['delta']:+d})"
            )


@app.command()
@friendly
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
        typer.Option("--eval", callback=_id, help="Evaluation to show (default: the latest)."),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write one self-contained HTML page: loss curves, accuracy against parameters, the
    confusion matrix, per-class accuracy, the sample and the misclassified images.

    Example: mnist-ray report --out report.html
    """
    import os
    import uuid

    from mnist_ray.report import build

    for r in runs or []:
        _id(r)
    page, bad = build(Store(store), runs, eval_id)
    _skipped(bad)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out_path)  # never a half-written page
    except OSError as exc:
        tmp.unlink(missing_ok=True)
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

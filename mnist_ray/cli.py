"""The command line: parse, call, print. Results go to stdout, progress to stderr.

mnist-ray submit train                 # train on an embedded local Ray
mnist-ray evaluate --shards 4          # evaluate the latest run on 4 CPU tasks
mnist-ray results                      # runs and evaluations in the store
mnist-ray show                         # the random sample, drawn in the terminal
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mnist_ray import __version__, jobs
from mnist_ray.config import MAX_SHARDS, ConfigError, EvalConfig, TrainConfig, check_id
from mnist_ray.store import DEFAULT_STORE, Store
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
    checkpoint_every: Annotated[
        float,
        typer.Option(
            min=0,
            max=86_400,
            help="Seconds between checkpoints a retried task resumes from; 0: every epoch.",
        ),
    ] = 60.0,
    wait: Annotated[
        bool, typer.Option(help="With an http:// address: follow the job to its end.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train the softmax regression on a Ray worker (a GPU when there is one), store the run.

    Example: mnist-ray submit train --epochs 15 --store ./mnist-ray-store
    """
    cfg = TrainConfig(dataset.value, epochs, batch_size, lr, seed).validate()
    if jobs.is_remote(address):
        argv = jobs.command_argv(ctx)
        raise typer.Exit(jobs.submit_cli(address, store, argv, wait=wait, log=err.print))
    target = Store(store)
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
    wait: Annotated[
        bool, typer.Option(help="With an http:// address: follow the job to its end.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a run on the 10,000 test images, sharded over CPU tasks; store the result.

    Example: mnist-ray evaluate --shards 4
    """
    EvalConfig(shards).validate()
    if jobs.is_remote(address):
        argv = jobs.command_argv(ctx)
        raise typer.Exit(jobs.submit_cli(address, store, argv, wait=wait, log=err.print))
    target = Store(store)
    found = target.find_run(run)
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
    checkpoint_every: Annotated[
        float,
        typer.Option(
            min=0,
            max=86_400,
            help="Seconds between checkpoints a retried trial resumes from; 0: every epoch.",
        ),
    ] = 60.0,
    resume: Annotated[
        str | None,
        typer.Option(help="Run the trials of this sweep that have no run yet.", metavar="SWEEP_ID"),
    ] = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    address: AddressOpt = None,
    wait: Annotated[
        bool, typer.Option(help="With an http:// address: follow the job to its end.")
    ] = True,
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
    if jobs.is_remote(address):
        argv = jobs.command_argv(ctx)
        raise typer.Exit(jobs.submit_cli(address, store, argv, wait=wait, log=err.print))
    target = Store(store)
    try:
        summary = sweeps.run_sweep(spec, target, address, data_dir, resume, log=err.print)
    except KeyboardInterrupt:
        fail("interrupted: every trial was stopped; finished trials keep their runs.", 130)
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


@app.command()
@friendly
def results(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List the runs and evaluations in the store; unreadable files are named, not fatal.

    Example: mnist-ray results --store ./mnist-ray-store
    """
    target = Store(store)
    runs, bad_runs = target.read("runs")
    evals, bad_evals = target.read("evaluations")
    for path, problem in bad_runs + bad_evals:
        err.print(f"[yellow]Skipped[/] {path}: {problem}", markup=True)
    if as_json:
        print(to_json({"runs": runs, "evaluations": evals}))
        return
    table = Table(title=f"runs in {target.location}", title_justify="left")
    for col in ("run_id", "created", "dataset", "epochs", "device", "final cost", "seconds"):
        table.add_column(col)
    for r in runs:
        cost = f"{r['epoch_costs'][-1]:.9f}" if r["epoch_costs"] else "-"
        table.add_row(
            r["run_id"],
            f"{r['created_at']:%Y-%m-%d %H:%M}",
            r["dataset"],
            str(r["epochs"]),
            r["device"],
            cost,
            f"{r['train_seconds']:.2f}",
        )
    out.print(table)
    table = Table(title=f"evaluations in {target.location}", title_justify="left")
    for col in ("eval_id", "run_id", "shards", "accuracy", "correct", "sample"):
        table.add_column(col)
    for e in evals:
        table.add_row(
            e["eval_id"],
            e["run_id"],
            str(e["shards"]),
            f"{e['accuracy']:.4f}",
            f"{e['correct']}/{e['total']}",
            f"#{e['sample_index']}: {e['sample_label']} -> {e['sample_prediction']}",
        )
    out.print(table)


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
) -> None:
    """Draw an evaluation's random sample in the terminal: label, prediction, probabilities.

    Example: mnist-ray show --png sample.png
    """
    import numpy as np

    evals, _ = Store(store).read("evaluations")
    if eval_id is not None:
        evals = [e for e in evals if e["eval_id"] == eval_id or e["eval_id"].startswith(eval_id)]
    if not evals:
        what = f"no evaluation {eval_id}" if eval_id else "no evaluations yet"
        fail(f"{what} in {store}; run `mnist-ray evaluate` first")
    e = evals[-1]
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


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """mnist-ray: train and evaluate the classic MNIST softmax regression on Ray."""
    if version:
        print(f"mnist-ray {__version__}")
        raise typer.Exit()

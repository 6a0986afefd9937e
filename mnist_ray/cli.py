"""The command line: parse, call, print (render.py builds what a person sees). Results go
to stdout, progress to stderr.

mnist-ray submit train                 # train on an embedded local Ray
mnist-ray submit train --model cnn     # one of the course's other models (`mnist-ray models`)
mnist-ray evaluate --shards 4          # evaluate the latest run on 4 CPU tasks
mnist-ray results                      # runs and evaluations in the store
mnist-ray show                         # the random sample, drawn in the terminal
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated

import typer

from mnist_ray import (  # noqa: F401
    __version__,
    cli_store,
    helptext,
    jobs,
    leftovers,
    output,
    render,
    ui,
)
from mnist_ray.config import (
    CHECKPOINT_EVERY,
    MAX_SHARDS,
    OPT_IN,
    EvalConfig,
    TrainConfig,
    check_id,
    name_values,
)
from mnist_ray.store import DEFAULT_STORE, Store
from mnist_ray.streams import install_result_marker
from mnist_ray.ui import (
    AddressOpt,
    CheckpointEveryOpt,
    DataDirOpt,
    Dataset,
    Gpus,
    JsonOpt,
    StoreOpt,
    WaitOpt,
    emit,
    emit_json,
    err,
    friendly,
    valid_id,
)

TUTORIAL = TrainConfig()  # the options' defaults: the classic tutorial's, written once
EVAL = EvalConfig()
DATASET = Dataset(TUTORIAL.dataset)
CONSTANT, LAST = ui.Schedule(TUTORIAL.lr_schedule), ui.Keep(TUTORIAL.keep)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="The classic MNIST softmax regression as a distributed batch job on Ray.",
)
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job: `mnist-ray submit train`.")
app.add_typer(submit_app, name="submit")
app.add_typer(jobs.app, name="jobs")


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
    model_args: ui.ModelArgsOpt = None,
    optimizer: ui.OptimizerOpt = None,
    lr: ui.LrOpt = None,
    weight_decay: ui.WeightDecayOpt = None,
    momentum: ui.MomentumOpt = None,
    optimizer_args: ui.OptimizerArgsOpt = None,
    lr_schedule: ui.ScheduleOpt = CONSTANT,
    lr_step: ui.LrStepOpt = None,
    lr_gamma: ui.LrGammaOpt = None,
    warmup_epochs: ui.WarmupOpt = TUTORIAL.warmup_epochs,
    val_split: ui.ValSplitOpt = TUTORIAL.val_split,
    keep: ui.KeepOpt = LAST,
    patience: ui.PatienceOpt = None,
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
    resume: Annotated[
        str | None,
        typer.Option(
            callback=valid_id,
            metavar="RUN",
            help="Go on with an interrupted run (id or unique prefix), with its own settings.",
        ),
    ] = None,
    discard: Annotated[
        bool, typer.Option("--discard", help="Ctrl-C or a failure deletes the run, not kept.")
    ] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Train a model (softmax unless --model) on a Ray worker, a GPU if there is one; store it.
    Ctrl-C leaves the run interrupted: `--resume RUN` goes on from its last checkpoint.

    Example: mnist-ray submit train --model cnn --epochs 15 --store ./mnist-ray-store
    """
    from mnist_ray.placement import fits_this_machine

    if resume is None:
        cfg = TrainConfig(
            dataset=dataset.value, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            model=model, optimizer=optimizer, **opt_in(ctx),
        ).validate()  # fmt: skip
        if address is None:  # an embedded Ray is this machine: refused before it starts
            fits_this_machine(gpus.value, cpus)
    target = _store_or_submit(ctx, address, store, wait)
    from mnist_ray import data, runs
    from mnist_ray.store import new_id

    found = None
    if resume is not None:
        found = runs.resumable(target, resume, given(ctx, submit_train))
        if found["status"] == "finished":
            err.print(f"run {found['run_id']} is finished; nothing to resume")
            if as_json:
                emit_json(found)
            return
        cfg, g, cpus, checkpoint_every = runs.settings(found, gpus.value, cpus, checkpoint_every)
        gpus = Gpus(g)
        if address is None:
            fits_this_machine(gpus.value, cpus)
    images, labels = data.load(cfg.dataset, "train", data_dir)
    target.check_writable()  # fail now, not after 15 epochs
    from mnist_ray.runs import train_and_store

    run_id = found["run_id"] if found else new_id("run")
    try:
        row = train_and_store(
            cfg, images, labels, target, address, gpus=gpus.value,
            checkpoint_every=checkpoint_every, log=err.print, cpus=cpus,
            resume=found, keep=not discard, run_id=run_id,
        )  # fmt: skip
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM from `jobs stop`
        err.print(interrupted(ctx, run_id, discard))
        raise typer.Exit(128 + getattr(exc, "signum", 2)) from None
    if as_json:
        emit_json(row)
    else:
        emit(render.trained(row))


# The options of `submit train` that are the run's settings (each a column of its row).
SETTINGS = [f.name for f in dataclasses.fields(TrainConfig)] + ["gpus", "cpus", "checkpoint_every"]
GIVEN = ("COMMANDLINE", "ENVIRONMENT")  # typer's sources of a value the user chose


def given(ctx, command) -> dict[str, tuple[str, object]]:
    """The settings given on the command line: {name: (option as spelled, value)}, each
    value as the run row holds it (NAME=VALUE pairs as their JSON object)."""
    found = {}
    for name in SETTINGS:
        if name in ctx.params and ctx.get_parameter_source(name).name in GIVEN:
            value = getattr(ctx.params[name], "value", ctx.params[name])
            if name in PAIRS:
                value = name_values(name, value)
            found[name] = (ui.spelled(name, command), value)
    return found


PAIRS = ("model_args", "optimizer_args")  # repeatable NAME=VALUE options


def opt_in(ctx) -> dict:
    """The opt-in training settings of `submit train` or `sweep` (config.OPT_IN), as
    TrainConfig takes them: NAME=VALUE pairs as their JSON object."""
    values = {name: ctx.params[name] for name in OPT_IN}
    return values | {name: name_values(name, values[name]) for name in PAIRS}


def interrupted(ctx, run_id: str, discard: bool) -> str:
    """What Ctrl-C (or SIGTERM) during `submit train` says last: how to go on."""
    if discard:
        return f"interrupted: run {run_id} discarded (its row and checkpoints deleted)"
    return f"interrupted: run {run_id} kept with its checkpoints; go on with: {resume_hint(ctx, run_id)}"


def resume_hint(ctx, run_id: str) -> str:
    """The command that goes on with (finishes) run `run_id`, as it pastes."""
    return ui.pasteable(ctx, "submit", "train", "--resume", run_id)


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
    from mnist_ray.runs import evaluable

    # a finished run, the latest when --run is not given; an unfinished one says how to finish it
    found = evaluable(target, run, lambda run_id: resume_hint(ctx, run_id))
    from mnist_ray import data
    from mnist_ray.artifact import scoring
    from mnist_ray.runs import evaluate_and_store

    weights, onnx = scoring(target, found)  # its exported model, else its checked weights

    images, labels = data.load(found["dataset"], "test", data_dir)
    target.check_writable()
    row = evaluate_and_store(
        found, weights, images, labels, target, address=address, shards=shards, log=err.print,
        onnx=onnx,
    )  # fmt: skip
    if as_json:
        emit_json(row)
    else:
        emit(render.evaluated(row))


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
    model_args: ui.ModelArgsOpt = None,
    weight_decay: ui.WeightDecayOpt = None,
    momentum: ui.MomentumOpt = None,
    optimizer_args: ui.OptimizerArgsOpt = None,
    lr_schedule: ui.ScheduleOpt = CONSTANT,
    lr_step: ui.LrStepOpt = None,
    lr_gamma: ui.LrGammaOpt = None,
    warmup_epochs: ui.WarmupOpt = TUTORIAL.warmup_epochs,
    val_split: ui.ValSplitOpt = TUTORIAL.val_split,
    keep: ui.KeepOpt = LAST,
    patience: ui.PatienceOpt = None,
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
        lr, batch_size=batch_size, seed=seed, epochs=epochs, dataset=dataset.value,
        samples=samples, search_seed=search_seed, early_stop=early_stop,
        gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, evaluate=evaluate,
        shards=shards, checkpoint_every=checkpoint_every, model=model, optimizer=optimizer,
        train_options=opt_in(ctx),  # the same in every trial
    )  # fmt: skip
    if resume is not None:
        check_id(resume, "resume")
    if address is None:
        from mnist_ray.placement import fits_this_machine

        share = str(gpus_per_trial or 0)
        fits_this_machine(share, cpus_per_trial, "gpus_per_trial", "cpus_per_trial")
    target = _store_or_submit(ctx, address, store, wait)
    summary = sweeps.run_sweep(
        spec, target, address, data_dir=data_dir, resume=resume, log=err.print,
        again=lambda sweep_id: ui.pasteable(ctx, "sweep", "--resume", sweep_id, store=target.location),
    )  # fmt: skip
    if as_json:
        emit_json(summary)
    else:
        emit(render.leaderboard(summary))


@app.command()
@friendly("models")
def models(as_json: JsonOpt = False) -> None:
    """List the models `submit train --model` trains: the course program each reproduces,
    its parameter count, the optimizer and learning rate it trains with by default.

    Example: mnist-ray models --json
    """
    from mnist_ray.model import catalogue

    rows = catalogue()
    if as_json:
        emit_json(rows)
    else:
        emit([output.as_table("models", [*rows[0]], rows)])


# ---- results (show, query, compact, compare, report: cli_store.py) -------------------------------------------------------------------------


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

    cli_store.one_format(as_json, as_csv)
    target = Store(store)
    target.check_exists()
    if limit is None and not (as_json or as_csv):
        limit = RESULTS_SHOWN  # a table of 100,000 runs helps nobody; scripts get every row
    view = listing(target, where, sort, limit, all_columns)
    cli_store.skipped(view.bad)
    for table in ("runs", "evaluations"):
        if (n := len(target.list(table, ".parquet"))) > COMPACT_HINT:
            err.print(f"{table}: {n} files; `mnist-ray compact --store {store}` makes reads fast")
    if as_json:
        emit_json({"runs": view.runs, "evaluations": view.evaluations})
    elif as_csv:
        sys.stdout.write(output.as_csv(list(view.runs[0]) if view.runs else [], view.runs))
    else:
        emit(render.results(target.location, view, EVAL_COLUMNS))


for command in cli_store.COMMANDS:
    app.command()(command)


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """mnist-ray: train and evaluate the classic MNIST softmax regression on Ray."""
    install_result_marker()  # a job submitted by mnist-ray: its result lines framed
    leftovers.end_leftovers(err.print)  # what a killed embedded driver left running
    if version:
        print(f"mnist-ray {__version__}")
        raise typer.Exit()

"""`submit train --resume RUN`: which run, with which settings, and what Ctrl-C says.

    found = resumable(store, "run-2026", given(ctx, submit_train))  # refuses what can't go on
    cfg, gpus, cpus, checkpoint_every = settings(found, gpus, cpus, checkpoint_every)
    err.print(interrupted(ctx, run_id, discard=False))  # "... --resume run-... --store s"

A run goes on with its own settings, read from its row: an option given on the command
line that contradicts one of them is refused (exit 2), one that agrees is fine. A running
run (its driver alive: mnist_ray/liveness.py) is refused; a finished one is returned as
it is, for the caller to say so and change nothing.
"""

from __future__ import annotations

import dataclasses

from mnist_ray.config import TrainConfig
from mnist_ray.query import find_run, read_rows
from mnist_ray.store import Store
from mnist_ray.ui import Gpus, fail, pasteable, spelled

# The options of `submit train` that are the run's settings (each a column of its row).
SETTINGS = [f.name for f in dataclasses.fields(TrainConfig)] + ["gpus", "cpus", "checkpoint_every"]
GIVEN = ("COMMANDLINE", "ENVIRONMENT")  # typer's sources of a value the user chose


def given(ctx, command) -> dict[str, tuple[str, object]]:
    """The settings given on the command line: {name: (option as spelled, value)}."""
    return {
        name: (spelled(name, command), getattr(ctx.params[name], "value", ctx.params[name]))
        for name in SETTINGS
        if name in ctx.params and ctx.get_parameter_source(name).name in GIVEN
    }


def resumable(store: Store, wanted: str, options: dict[str, tuple[str, object]]) -> dict:
    """The run `wanted` names (id or unique prefix), if it can go on; else one line, exit."""
    store.check_exists()  # a mistyped path is said so, not taken for an empty store
    run = find_run(store, wanted, about="resume")
    run_id = run["run_id"]
    if run["status"] == "running":
        fail(
            f"--resume {wanted}: run {run_id} is still running (its driver is alive); stop it first"
        )
    if run["status"] == "finished":
        return run
    for name, (option, value) in options.items():
        had = run.get(name)
        if had is not None and value != had:
            fail(f"{option} {value}: run {run_id} was trained with {had}; leave {option} out", 2)
    return run


def evaluable(store: Store, wanted: str | None, ctx=None) -> dict:
    """The run `evaluate --run` names, refused unless finished (no other has weights); with
    no --run, the latest finished run. `ctx`: the command's, for the hint's --store."""
    if wanted is None:
        finished = [r for r in read_rows(store, "runs")[0] if r["status"] == "finished"]
        return find_run(store, None, runs=finished)
    run = find_run(store, wanted)
    if run["status"] != "finished":
        fail(
            f"--run {wanted}: run {run['run_id']} is {run['status']} and has no weights; "
            f"finish it with `{pasteable(ctx, 'submit', 'train', '--resume', run['run_id'])}`"
        )
    return run


def settings(run: dict, gpus: Gpus, cpus: int, checkpoint_every: float):
    """(TrainConfig, gpus, cpus, checkpoint_every) of the run; a setting its row lacks (a
    run stored before it was recorded) is the command line's."""
    if run.get("model_source") is not None:  # a user's model file: its text, not the file
        from mnist_ray.usermodel import ModelError, restore

        try:
            restore(run["model"], run["model_source"])
        except ModelError as exc:
            fail(f"--resume {run['run_id']}: {exc.line()}")
    cfg = TrainConfig(**{f.name: run[f.name] for f in dataclasses.fields(TrainConfig)})
    gpus = Gpus(run["gpus"]) if run.get("gpus") else gpus
    cpus = run.get("cpus") or run.get("threads") or cpus
    every = run.get("checkpoint_every")
    return cfg.validate(), gpus, cpus, checkpoint_every if every is None else every


def interrupted(ctx, run_id: str, discard: bool) -> str:
    """What Ctrl-C (or SIGTERM) during `submit train` says last: how to go on."""
    if discard:
        return f"interrupted: run {run_id} discarded (its row and checkpoints deleted)"
    again = pasteable(ctx, "submit", "train", "--resume", run_id)
    return f"interrupted: run {run_id} kept with its checkpoints; go on with: {again}"

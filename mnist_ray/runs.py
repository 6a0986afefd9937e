"""A run's life in the store, around the Ray calls of cluster.py: its `running` row when
it starts, its heartbeat, the task's outcome to its `finished` row, and an evaluation's row.

    from mnist_ray.runs import train_and_store, evaluate_and_store
    row = train_and_store(cfg, images, labels, store, None, gpus="auto", log=print)
    row = evaluate_and_store(run, weights, images, labels, store, address=None, shards=4)

Ctrl-C or SIGTERM leaves a run `interrupted`, an exception `failed`, `keep=False`
(`--discard`) deletes it (Leaving); a driver that dies without a word leaves a `running`
row that readers take as interrupted (liveness.py); `--resume` reads the run's own
settings from its row and refuses what can't go on (resumable, evaluable, settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

import numpy as np

from mnist_ray import checkpoints, liveness, signals, usermodel
from mnist_ray.cluster import evaluate_on_ray, train_on_ray
from mnist_ray.config import CHECKPOINT_EVERY, TrainConfig, first_line
from mnist_ray.errors import NamedError, RefusedError
from mnist_ray.evaluate import misclassified_columns, sample_index
from mnist_ray.outcome import TrainOutcome
from mnist_ray.output import say
from mnist_ray.query import find_run, read_rows
from mnist_ray.schema import RUNS, evaluation_row, finished_run_row, run_row
from mnist_ray.session import connect
from mnist_ray.store import Store, StoreError, new_id, now, tensors_digest

# ---- a run that did not finish: its row ---------------------------------------------------------
# `settings` are the run's identity and settings (run_id, created_at, the TrainConfig fields,
# cpus, gpus, checkpoint_every): every row of a run holds them, so `submit train --resume`
# can go on from the row alone.


def unfinished(settings: dict, status: str, costs: list[float], failure: str | None) -> dict:
    """A run row holding the run's settings and no outcome: running, interrupted, failed.
    `costs`: the epochs done so far (not a final cost: readers show none)."""
    empty = {n: None for n in RUNS.names}
    state = dict(status=status, failure=failure, epoch_costs=costs, updated_at=now())
    return run_row(**empty | settings | state)


def failure(exc: BaseException) -> str:
    """A failed run's cause, one line: an error of ours says it already; others by type."""
    if isinstance(exc, NamedError):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def discard(store: Store, run_id: str) -> None:
    """`--discard`: a run that did not finish leaves nothing (its row, its checkpoints)."""
    checkpoints.clear(store, run_id)
    with contextlib.suppress(OSError, FileNotFoundError):
        store.fs.delete_file(store.path(f"runs/{run_id}.parquet"))


class Leaving:
    """Writes, once, the state a run was left in; with keep=False deletes the run instead."""

    def __init__(self, store: Store, settings: dict, costs: list[float], keep: bool = True):
        self.store, self.settings, self.costs, self.keep = store, settings, costs, keep
        self.written = False

    def _write(self, status: str, cause: str | None) -> None:
        if self.keep and not self.written:
            self.written = True
            # A store that fails now can't be told more; the liveness rule (liveness.py)
            # reads the run as interrupted once its driver is gone.
            with contextlib.suppress(StoreError):
                self.store.write_row("runs", unfinished(self.settings, status, self.costs, cause))

    def interrupted(self) -> None:
        """First thing at Ctrl-C or SIGTERM: `jobs stop` kills the driver 3 s later."""
        self._write("interrupted", None)

    def because(self, exc: BaseException) -> None:
        """Training ended with `exc`: interrupted (Ctrl-C, SIGTERM, exit) or failed. A
        request refused before any training (an error naming the option: `--gpus 1` on a
        cluster without a GPU, an `--address` nothing answers at) was bad input, not a
        run: it leaves nothing, as bad input never does."""
        refused = isinstance(exc, NamedError) and exc.about is not None
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            self.interrupted()
        elif not refused:
            self._write("failed", failure(exc))
        if refused or not self.keep:
            discard(self.store, self.settings["run_id"])


# ---- a run that trains: from its running row to its finished row ------------------------------


def store_run(
    store: Store, run_id: str, cfg: TrainConfig, outcome: TrainOutcome, /, **extra
) -> dict:
    """Write a trained run's weights, then its finished row, which replaces its running row.
    `extra`: more columns (sweep_id, the run's settings), or one known better (created_at)."""
    import ray

    weights_uri, sha = store.write_weights(run_id, outcome.weights)
    onnx_sha = store.write_artifact(run_id, outcome.onnx) if outcome.onnx is not None else None
    columns = dict(
        run_id=run_id,
        created_at=now(),
        **cfg.to_dict(),
        weights_uri=weights_uri,
        weights_sha256=sha,
        onnx_sha256=onnx_sha,
        weights_digest=tensors_digest(outcome.weights),
        ray_version=ray.__version__,
        model_source=usermodel.source_of(cfg.model),  # a user's file, to evaluate it later
        model_files=usermodel.files_of(cfg.model),  # and the .py files beside it
        status="finished",
    )
    row = finished_run_row(outcome, **columns | extra | {"updated_at": now()})
    store.write_row("runs", row)
    return row


def train_and_store(
    cfg: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    store: Store,
    address: str | None,
    *,
    gpus: str = "auto",
    checkpoint_every: float = CHECKPOINT_EVERY,
    log: Callable[[str], None] = say,
    cpus: int = 1,
    resume: dict | None = None,
    keep: bool = True,
    run_id: str | None = None,
) -> dict:
    """`submit train`: the run's `running` row (all it takes to go on), then connect, train,
    store weights and the finished row; returns that row. `resume`: the row of a run to go
    on with, from its newest checkpoint; else a new run (`run_id`). Ctrl-C or SIGTERM leaves
    it `interrupted`, an exception `failed`; keep=False (`--discard`) deletes it (Leaving)."""
    run_id = resume["run_id"] if resume else run_id or new_id("run")
    created = resume["created_at"] if resume else now()
    settings = dict(run_id=run_id, created_at=created, **cfg.to_dict())
    settings["model_source"] = usermodel.source_of(cfg.model)  # a user's file: its text
    settings["model_files"] = usermodel.files_of(cfg.model)  # the .py files beside it
    settings |= dict(cpus=cpus, gpus=gpus, checkpoint_every=checkpoint_every)
    costs: list[float] = []  # the epochs seen so far, for the row of a run left unfinished
    left = Leaving(store, settings, costs, keep)
    verb = "Resuming" if resume else "Training"
    log(f"{verb} {cfg.model} on {cfg.dataset} for {cfg.epochs} epochs as run {run_id} ...")
    with liveness.Heartbeat(store, run_id):
        store.write_row("runs", unfinished(settings, "running", [], None))
        try:
            with connect(address, log=log), signals.sigterm_stops():
                outcome = train_on_ray(
                    cfg, images, labels, store, run_id, gpus=gpus, log=log,
                    checkpoint_every=checkpoint_every, cpus=cpus,
                    on_epoch=lambda item: costs.append(item["cost"]), on_stop=left.interrupted,
                )  # fmt: skip
        except BaseException as exc:
            left.because(exc)
            raise
        row = store_run(store, run_id, cfg, outcome, **settings)
    if row["export_failure"]:
        log(f"Not exported to ONNX ({row['export_failure']}): the shards score it in torch.")
    checkpoints.clear(store, run_id)
    return row


# ---- evaluation -------------------------------------------------------------------------------


# ---- evaluation -------------------------------------------------------------------------------


def evaluate_and_store(
    run: dict,
    weights: dict[str, np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    store: Store,
    *,
    address: str | None,
    shards: int,
    log: Callable[[str], None] = say,
    onnx: bytes | None = None,
) -> dict:
    """`evaluate`: connect, evaluate the run's weights (or its exported model: artifact.scoring)
    on Ray, write the evaluation row."""
    sample = sample_index(run["seed"], len(labels))
    log(f"Evaluating run {run['run_id']} ({run['model']}) on {shards} shard(s) ...")
    started = time.perf_counter()
    with connect(address, log=log):
        merged = evaluate_on_ray(
            weights, images, labels, shards, sample, log=log, model=run["model"], onnx=onnx,
            model_args=usermodel.run_args(run) or None,
        )  # fmt: skip
    s = merged["sample"]
    row = evaluation_row(
        eval_id=new_id("eval"),
        run_id=run["run_id"],
        created_at=now(),
        dataset=run["dataset"],
        shards=shards,
        accuracy=merged["accuracy"],
        correct=merged["correct"],
        total=merged["total"],
        per_class_accuracy=merged["per_class_accuracy"],
        confusion=merged["confusion"],
        sample_index=s["index"],
        sample_label=s["label"],
        sample_prediction=s["prediction"],
        sample_probabilities=s["probabilities"],
        sample_pixels=s["pixels"],
        eval_seconds=time.perf_counter() - started,
        node_ids=merged["node_ids"],
        shard_peak_rss_mib=merged["shard_peak_rss_mib"],
        engine=merged["engine"],
        **misclassified_columns(merged),
    )
    store.write_row("evaluations", row)
    return row


# ---- what `--resume` reads and refuses ------------------------------------------------------
# A run goes on with its own settings, read from its row: an option given on the command
# line that contradicts one of them is refused, one that agrees is fine. A running run (its
# driver alive: liveness.py) is refused; a finished one is returned as it is, for the
# caller to say so and change nothing.


def resumable(store: Store, wanted: str, options: dict[str, tuple[str, object]]) -> dict:
    """The run `wanted` names (id or unique prefix), if it can go on. `options`: the
    settings given on the command line, {name: (option as the command spells it, value)}."""
    store.check_exists()  # a mistyped path is said so, not taken for an empty store
    run = find_run(store, wanted, about="resume")
    run_id = run["run_id"]
    if run["status"] == "running":
        raise StoreError(
            f"run {run_id} is still running (its driver is alive); stop it first",
            about="resume",
            value=wanted,
        )
    if run["status"] == "finished":
        return run
    for name, (option, value) in options.items():
        had = run.get(name)
        if had is not None and value != had:
            raise RefusedError(
                f"run {run_id} was trained with {had}; leave {option} out", option, value
            )
    return run


def evaluable(store: Store, wanted: str | None, resume_hint: Callable[[str], str]) -> dict:
    """The run `evaluate --run` names, refused unless finished (no other has weights); with
    no --run, the latest finished run. `resume_hint(run_id)`: the command that finishes it."""
    if wanted is None:
        finished = [r for r in read_rows(store, "runs")[0] if r["status"] == "finished"]
        return find_run(store, None, runs=finished)
    run = find_run(store, wanted)
    if run["status"] != "finished":
        raise StoreError(
            f"run {run['run_id']} is {run['status']} and has no weights; "
            f"finish it with `{resume_hint(run['run_id'])}`",
            about="run",
            value=wanted,
        )
    return run


def settings(run: dict, gpus: str, cpus: int, checkpoint_every: float):
    """(TrainConfig, gpus, cpus, checkpoint_every) of the run; a setting its row lacks (a
    run stored before it was recorded) is the command line's."""
    if run.get("model_source") is not None:  # a user's model file: its text, not the file
        try:
            usermodel.restore(run["model"], run["model_source"], files=usermodel.run_files(run))
        except usermodel.ModelError as exc:
            raise StoreError(exc.line(), about="resume", value=run["run_id"]) from None
    cfg = TrainConfig(**{f.name: run[f.name] for f in dataclasses.fields(TrainConfig)})
    gpus = run.get("gpus") or gpus
    cpus = run.get("cpus") or run.get("threads") or cpus
    every = run.get("checkpoint_every")
    return cfg.validate(), gpus, cpus, checkpoint_every if every is None else every

"""Sweeps: many trainings as one Ray Tune experiment, each trial an ordinary run in the store.

    from mnist_ray.sweep import definition, run_sweep
    spec = definition(model="softmax,mlp", lr="0.01,0.1", epochs=2)   # a 2 x 2 grid
    summary = run_sweep(spec, Store("mnist-ray-store"), address=None)
    summary["trials"][0]                                                # the best trial first
    run_sweep(spec, store, None, resume="sweep-...")   # the trials with no run yet

sweepplan.py decides what to try (its names are importable from here too); this module
hands the planned trials to Tune as one `grid_search` and runs them.

Every trial runs the training function `submit train` runs (`training_stream`, with
`int(--cpus-per-trial)` torch threads, at least one), so its costs equal a single run's,
bit for bit on the CPU. A trial reports each epoch to Tune (ASHA stops bad ones with
`--early-stop`), then writes its weights and run row itself, before its last report, so
that a trial the scheduler stops at its end still lands. A user's model file reaches
the trials as its text in the trial config (a trial actor has no runtime_env of its own);
a `package.module` model must be importable where the trials run. Tune retries a trial whose
worker died (FailureConfig) and the retry resumes from the run's checkpoint in the
store; an exception in the training is not retried: the trial reports it once and ends,
and the others go on. Ctrl-C leaves the unfinished trials' checkpoints in the store:
`--resume` runs those trials again under the same run ids, and each goes on from its
newest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext

import pyarrow.fs as pafs

from mnist_ray import checkpoints, data, usermodel
from mnist_ray.config import CHECKPOINT_EVERY, RETRIES, TrainConfig, first_line
from mnist_ray.errors import ClusterError
from mnist_ray.output import say
from mnist_ray.query import read_rows
from mnist_ray.store import Store, StoreError, new_id
from mnist_ray.sweepplan import (  # noqa: F401 - the planning names, importable from here too
    AXES,
    MAX_TRIALS,
    PARAMS,
    definition,
    leaderboard,
    load_sweep,
    new_sweep,
    parse_names,
    parse_values,
    plan,
    planned,
    sweep_runs,
    write_sweep,
)

DEFAULT_GPU_SHARE = 0.25  # --gpus-per-trial when the cluster has a GPU: four trials per GPU


# ---- one trial, inside a Tune trial actor -------------------------------------------------------


def trial(config: dict, images, labels) -> None:
    """A Tune function trainable: train one configuration, report each epoch, store the run.
    The last epoch is reported after the run row is written, so a trial stopped on its
    last report (ASHA's max_t) has landed; an exception is reported once, not raised,
    because Tune would retry it like a dead worker."""
    from ray import tune

    from mnist_ray.cluster import training_stream
    from mnist_ray.runs import store_run

    run_id, cfg = config["trial"]["run_id"], TrainConfig(**config["trial"]["cfg"])
    source = config.get("model_sources", {}).get(cfg.model)
    files = config.get("model_files", {}).get(cfg.model)
    store = Store(config["store"])  # attempts counted there: Ray counts no Tune restart
    row = dict(sweep_id=config["sweep_id"], attempts=checkpoints.count_attempt(store, run_id))
    args = (images, labels, store.location, run_id, config["use_gpu"], config["checkpoint_every"])
    stream = training_stream(cfg.to_dict(), *args, threads=config["threads"])
    pending = None
    try:
        if source is not None:  # a user's file: its text, as the driver read it
            usermodel.restore(cfg.model, source, files=files)
        for event in stream:
            if "outcome" in event:
                store_run(store, run_id, cfg, event["outcome"], **row)
                checkpoints.clear(store, run_id)
                break
            if pending is not None:
                tune.report(pending)
            pending = {k: event[k] for k in ("epoch", "cost", "seconds")}
            if event.get("val_accuracy") is not None:  # ASHA's metric with a validation split
                pending["val_accuracy"] = event["val_accuracy"]
    except Exception as exc:  # any failure of the training is the trial's result
        tune.report({"epoch": 0, "cost": math.inf, "error": f"{type(exc).__name__}: {exc}"})
        return
    finally:
        stream.close()
    tune.report({**pending, "stored": True})


# ---- the experiment, on the driver --------------------------------------------------------------


def run_sweep(
    spec: dict,
    store: Store,
    address: str | None,
    data_dir=None,
    resume: str | None = None,
    log: Callable[[str], None] = say,
    again: Callable[[str], str] | None = None,
) -> dict:
    """Run a sweep (or the missing trials of sweep `resume`) and return its summary: the
    sweep row plus the leaderboard. Ctrl-C ends every trial; the sweep row says so, and
    `again(sweep_id)` (the CLI's, spelt with its options) says how to go on."""
    sweep = load_sweep(store, resume) if resume is not None else new_sweep(spec)
    spec, sweep_id = json.loads(sweep["definition"]), sweep["sweep_id"]
    store.check_writable()
    # A trial the scheduler stopped stays stopped; a failed or interrupted one runs again.
    done = {r["run_id"] for r in sweep_runs(store, sweep_id)} | set(sweep["stopped"])
    todo = [(run_id, cfg) for run_id, cfg in planned(sweep) if run_id not in done]
    images, labels = data.load(spec["dataset"], "train", data_dir)
    total = len(sweep["trial_ids"])
    if resume is not None:
        log(f"Resuming sweep {sweep_id}: {len(todo)} of {total} trials have no run yet.")
        for run_id, cfg in todo:
            _say_resumed(store, run_id, cfg, log)
    else:
        log(f"Sweep {sweep_id}: {total} trial(s) of {spec['epochs']} epoch(s).")
    write_sweep(store, sweep, "running", 0.0)
    from mnist_ray.session import connect

    started = time.perf_counter()
    try:
        with connect(address, log=log, polled=False):  # Tune waits in one call
            failed, stopped = _tune(
                spec, store, sweep_id, todo, images=images, labels=labels, log=log
            )
            if spec["evaluate"]:
                _evaluate(store, sweep_id, spec, data_dir, log)
    except BaseException as exc:  # the row says how it ended; trials that finished keep runs
        how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_sweep(store, sweep, how, time.perf_counter() - started)
        if how == "interrupted":  # the unfinished trials' checkpoints stay for this
            log(f"To go on: {again(sweep_id) if again else f'mnist-ray sweep (resume {sweep_id})'}")
        raise
    seconds = time.perf_counter() - started
    row, runs = write_sweep(store, sweep, "finished", seconds, failed=failed, stopped=stopped)
    return {**row, **leaderboard(store, row, runs)}


def _say_resumed(store: Store, run_id: str, cfg: TrainConfig, log) -> None:
    """A line for a trial that will go on from its checkpoint (training_stream finds it)."""
    try:
        ckpt = checkpoints.latest(store, run_id, shapes=None)  # the trial checks the shapes
    except StoreError as exc:  # the trial will fail on it and say so; nothing to add here
        log(f"Trial {run_id}: {exc}")
        return
    if ckpt is not None:
        log(f"Trial {run_id} resumes from its checkpoint: epoch {ckpt.epoch} of {cfg.epochs}.")


def gpu_share(spec: dict, log: Callable[[str], None]) -> float:
    """--gpus-per-trial against what the cluster has: the default is a quarter GPU where
    there is a GPU, else CPU trials; a GPU share on a cluster without one fails at once."""
    import ray

    have = ray.cluster_resources()
    asked = spec["gpus_per_trial"]
    if asked is None:
        if have.get("GPU", 0) > 0:
            return DEFAULT_GPU_SHARE
        log("No GPU in the Ray cluster: CPU trials.")
        return 0.0
    if asked > have.get("GPU", 0):
        raise ClusterError(
            f"the Ray cluster has {have.get('GPU', 0):g} GPUs "
            f"({have.get('CPU', 0):g} CPUs), so the trials would wait forever; "
            "use --gpus-per-trial 0 for CPU trials",
            about="gpus_per_trial",
            value=f"{asked:g}",
        )
    return float(asked)


def _tune(spec, store, sweep_id, todo, *, images, labels, log) -> tuple[list[str], list[str]]:
    """One Tune experiment over `todo`; returns (failed "run_id: cause", stopped run_ids)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    gpus = gpu_share(spec, log)
    if not todo:
        return [], []
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C ends the sweep, not a soft pause
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0, the old output says nothing at all
    # The store keeps every result; Tune's own per-report JSON, CSV and TensorBoard writers
    # would take the driver's share of a small machine's CPUs from the trials.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    trainable = tune.with_resources(
        tune.with_parameters(trial, images=images, labels=labels),  # into the object store once
        {"cpu": spec["cpus_per_trial"], "gpu": gpus},
    )
    space = {
        "trial": tune.grid_search([{"run_id": r, "cfg": c.to_dict()} for r, c in todo]),
        "sweep_id": sweep_id,
        # Tune runs each trial in its own folder: a relative store must be made absolute
        "store": store.location if "://" in store.location else store.root,
        "use_gpu": gpus > 0,
        "checkpoint_every": spec.get("checkpoint_every", CHECKPOINT_EVERY),
        # torch's threads: the trial's whole CPUs, as `submit train --cpus` (the run row
        # records it; the CPU costs depend on it)
        "threads": max(1, int(spec["cpus_per_trial"])),
        # A trial actor gets no runtime_env (Tune takes none per trainable): a user's model
        # file goes as its text, which the trial runs (usermodel.restore) before training.
        "model_sources": {
            c.model: usermodel.source_of(c.model) for _, c in todo if usermodel.is_user(c.model)
        },
        "model_files": {  # and the .py files beside it (`from blocks import Block`)
            c.model: usermodel.load(c.model).files
            for _, c in todo
            if usermodel.is_user(c.model) and usermodel.parse(c.model)[0] == "file"
        },
    }
    scheduler = None
    if spec["early_stop"]:  # stop trials whose cost trails the others' at the same epoch
        # With a validation split: by validation accuracy, never by the test set.
        validated = bool((spec.get("train_options") or {}).get("val_split"))
        metric, mode = ("val_accuracy", "max") if validated else ("cost", "min")
        scheduler = ASHAScheduler(
            time_attr="epoch", metric=metric, mode=mode, max_t=spec["epochs"], grace_period=1
        )
    with _experiment_dir(store) as storage:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                reuse_actors=True,  # one process per slot: torch is imported once, not per trial
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=new_id(sweep_id),
                storage_path=storage,
                verbose=0,  # stdout is the result; progress goes to stderr below
                failure_config=tune.FailureConfig(max_failures=RETRIES),
                callbacks=[_progress(len(todo))],
            ),
        )
        grid = tuner.fit()
    failed, stopped = [], []
    for result in grid:
        run_id = result.config["trial"]["run_id"]
        metrics = result.metrics or {}
        if result.error is not None:
            failed.append(f"{run_id}: {first_line(result.error)}")
        elif "error" in metrics:
            failed.append(f"{run_id}: {metrics['error']}")
        elif not metrics.get("stored"):
            stopped.append(run_id)
            checkpoints.clear(store, run_id)  # a stopped trial is final: nothing to resume
    for line in failed:
        log(f"Trial failed: {line}")
    return failed, stopped


def _trial_name(t) -> str:
    return t.config["trial"]["run_id"]


def _experiment_dir(store: Store):
    """Tune's experiment state: under a local store, else a temp folder removed afterwards;
    never ~/ray_results."""
    if isinstance(store.fs, pafs.LocalFileSystem):
        return nullcontext(store.path("tune"))
    return tempfile.TemporaryDirectory(prefix="mnist-ray-tune-")


def _progress(total: int):
    """A Tune callback: one stderr line each time a trial ends. (Tune pickles its
    callbacks with the experiment, so this one holds nothing but a count.)"""
    from ray.tune import Callback

    class Progress(Callback):
        ended = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended += 1
            last = trial.last_result or {}
            cost = last.get("cost", math.inf)
            what = f"epoch {last['epoch']}, cost {cost:.9f}" if math.isfinite(cost) else "failed"
            say(f"Trials ended: {self.ended}/{total} ({_trial_name(trial)}: {what})")

        on_trial_error = on_trial_complete  # a trial that failed has ended too

    return Progress()


# ---- evaluation of the finished trials ----------------------------------------------------------


def _evaluate(store: Store, sweep_id: str, spec: dict, data_dir, log) -> None:
    """Every trial run without an evaluation, on the sharded evaluator; one row each."""
    from mnist_ray.artifact import scoring
    from mnist_ray.runs import evaluate_and_store

    evaluated = {e["run_id"] for e in read_rows(store, "evaluations")[0]}
    runs = [r for r in sweep_runs(store, sweep_id) if r["run_id"] not in evaluated]
    if not runs:
        return
    images, labels = data.load(spec["dataset"], "test", data_dir)
    for run in runs:  # on the connected Ray: evaluate_and_store's connect() reuses it
        weights, onnx = scoring(store, run)  # its exported model, else its checked weights
        row = evaluate_and_store(
            run, weights, images, labels, store, address=None, shards=spec["shards"], log=log,
            onnx=onnx,
        )  # fmt: skip
        log(f"Evaluated {run['run_id']}: accuracy {row['accuracy']:.4f}")

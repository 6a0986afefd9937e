"""Sweeps: many trainings as one Ray Tune experiment, each trial an ordinary run in the store.

    from mnist_ray.sweep import definition, run_sweep
    spec = definition(lr="0.01,0.1", seed="777,1", epochs=2)   # a 2 x 2 grid
    summary = run_sweep(spec, Store("mnist-ray-store"), address=None)
    summary["trials"][0]                                       # the best trial first

What to try is decided here, before Tune sees it: comma lists make a grid, ranges
(`0.001..1`, log-uniform for the learning rate) are drawn from `--search-seed` with
numpy, and the resulting trial list is handed to Tune as one `grid_search`. So the same
command always makes the same trials, and the sweep row can hold the full list, which
is what `--resume` needs: it runs exactly the trials that have no run row yet.

Every trial runs the training function `submit train` runs (`training_stream`), so its
costs equal a single run's, bit for bit on the CPU. A trial reports each epoch to Tune
(ASHA stops bad ones with `--early-stop`), then writes its weights and run row itself,
before its last report, so that a trial the scheduler stops at its end still lands.
Tune retries a trial whose worker died (FailureConfig) and the retry resumes from the
run's checkpoint in the store; an exception in the training is not retried: the trial
reports it once and ends, and the others go on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import pyarrow.fs as pafs

from mnist_ray import checkpoints, data
from mnist_ray.config import (
    CHECKPOINT_EVERY,
    RETRIES,
    ConfigError,
    EvalConfig,
    TrainConfig,
    check_id,
    first_line,
)
from mnist_ray.errors import ClusterError
from mnist_ray.output import say
from mnist_ray.query import read_rows
from mnist_ray.store import Store, StoreError, new_id, now

PARAMS = ("lr", "batch_size", "seed")  # what a sweep varies; epochs and dataset are one value
MAX_TRIALS = 10_000  # a typo like --seed 1..100000 with --samples must not plan forever
DEFAULT_GPU_SHARE = 0.25  # --gpus-per-trial when the cluster has a GPU: four trials per GPU


# ---- what to try: parsing and planning (no Ray) -------------------------------------------------


def parse_values(name: str, text: str) -> list | dict:
    """`0.01,0.1` -> [0.01, 0.1] (a grid axis); `0.001..1` -> {"range": [0.001, 1.0]}."""
    number = float if name == "lr" else int

    def one(word: str):
        try:
            value = number(word.strip())
        except ValueError:
            kind = "a number" if number is float else "a whole number"
            raise ConfigError(name, f"{word.strip()!r} is not {kind}") from None
        TrainConfig(**{name: value}).validate()  # the single-run limits, same messages
        return value

    if ".." in text:
        low, _, high = text.partition("..")
        low, high = one(low), one(high)
        if not low < high:
            raise ConfigError(name, f"range {text}: the low end must be below the high end")
        return {"range": [low, high]}
    values = [one(w) for w in text.split(",")]
    if len(set(values)) != len(values):
        raise ConfigError(name, f"{text}: a value is given twice")
    return values


def definition(
    lr: str = str(TrainConfig().lr),  # a single run's defaults: one trial is the tutorial's run
    batch_size: str = str(TrainConfig.batch_size),
    seed: str = str(TrainConfig.seed),
    epochs: int = TrainConfig.epochs,
    dataset: str = TrainConfig.dataset,
    samples: int = 1,
    search_seed: int = 0,
    early_stop: bool = False,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
    evaluate: bool = False,
    shards: int = EvalConfig.shards,
    checkpoint_every: float = CHECKPOINT_EVERY,
) -> dict:
    """What the user asked for, checked, as a JSON-able dict (kept in the sweep row)."""
    TrainConfig(dataset=dataset, epochs=epochs).validate()
    EvalConfig(shards).validate()
    if not 1 <= samples <= MAX_TRIALS:
        raise ConfigError("samples", f"{samples} is not in 1..{MAX_TRIALS}")
    if gpus_per_trial is not None and not (
        0 <= gpus_per_trial <= 1 or float(gpus_per_trial).is_integer()
    ):
        raise ConfigError(
            "gpus_per_trial", f"{gpus_per_trial:g}: a share of one GPU (0..1) or whole GPUs"
        )
    if cpus_per_trial < 0 or (cpus_per_trial == 0 and not gpus_per_trial):
        raise ConfigError("cpus_per_trial", f"{cpus_per_trial}: a trial needs a CPU or a GPU")
    spec = {
        **{n: parse_values(n, v) for n, v in zip(PARAMS, (lr, batch_size, seed), strict=True)},
        "epochs": epochs,
        "dataset": dataset,
        "samples": samples,
        "search_seed": search_seed,
        "early_stop": early_stop,
        "gpus_per_trial": gpus_per_trial,
        "cpus_per_trial": cpus_per_trial,
        "evaluate": evaluate,
        "shards": shards,
        "checkpoint_every": checkpoint_every,
    }
    count = samples * math.prod(len(v) for n in PARAMS if isinstance(v := spec[n], list))
    if count > MAX_TRIALS:
        raise ConfigError("samples", f"the sweep would have {count} trials, over {MAX_TRIALS}")
    return spec


def plan(spec: dict, sweep_id: str) -> list[tuple[str, TrainConfig]]:
    """The trials, in order, as (run_id, config): every grid point `samples` times, each
    range drawn anew per trial from one generator seeded by search_seed (reproducible)."""
    rng = np.random.default_rng(spec["search_seed"])
    axes = [spec[n] if isinstance(spec[n], list) else [None] for n in PARAMS]
    trials = []
    for _ in range(spec["samples"]):
        for point in itertools.product(*axes):
            values = dict(zip(PARAMS, point, strict=True))
            for name in PARAMS:
                if values[name] is None:
                    values[name] = _draw(rng, name, *spec[name]["range"])
            cfg = TrainConfig(dataset=spec["dataset"], epochs=spec["epochs"], **values)
            trials.append((f"run-{sweep_id.removeprefix('sweep-')}-t{len(trials):03d}", cfg))
    return trials


def _draw(rng: np.random.Generator, name: str, low, high):
    if name == "lr":  # learning rates span decades: uniform in log space
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return int(rng.integers(low, high, endpoint=True))


def new_sweep(spec: dict) -> dict:
    """A sweep as its row starts: its id and its trials, planned (what --resume reads back)."""
    sweep_id = new_id("sweep")
    trials = plan(spec, sweep_id)
    return {
        "sweep_id": sweep_id,
        "created_at": now(),
        "definition": json.dumps(spec),
        "trial_ids": [run_id for run_id, _ in trials],
        "trial_params": [json.dumps(cfg.to_dict()) for _, cfg in trials],
        "stopped": [],
    }


# ---- one trial, inside a Tune trial actor -------------------------------------------------------


def trial(config: dict, images, labels) -> None:
    """A Tune function trainable: train one configuration, report each epoch, store the run.
    The last epoch is reported after the run row is written, so a trial stopped on its
    last report (ASHA's max_t) has landed; an exception is reported once, not raised,
    because Tune would retry it like a dead worker."""
    from ray import tune

    from mnist_ray.cluster import store_run, training_stream

    run_id, cfg = config["trial"]["run_id"], TrainConfig(**config["trial"]["cfg"])
    store = Store(config["store"])  # attempts counted there: Ray counts no Tune restart
    row = dict(sweep_id=config["sweep_id"], attempts=checkpoints.count_attempt(store, run_id))
    args = (images, labels, store.location, run_id, config["use_gpu"], config["checkpoint_every"])
    stream = training_stream(cfg.to_dict(), *args)
    pending = None
    try:
        for event in stream:
            if "outcome" in event:
                store_run(store, run_id, cfg, event["outcome"], **row)
                checkpoints.clear(store, run_id)
                break
            if pending is not None:
                tune.report(pending)
            pending = {k: event[k] for k in ("epoch", "cost", "seconds")}
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
) -> dict:
    """Run a sweep (or the missing trials of sweep `resume`) and return its summary: the
    sweep row plus the leaderboard. Ctrl-C ends every trial; the sweep row says so."""
    sweep = load_sweep(store, resume) if resume is not None else new_sweep(spec)
    spec, sweep_id = json.loads(sweep["definition"]), sweep["sweep_id"]
    store.check_writable()
    # A trial the scheduler stopped stays stopped; a failed or interrupted one runs again.
    done = {r["run_id"] for r in sweep_runs(store, sweep_id)} | set(sweep["stopped"])
    trials = zip(sweep["trial_ids"], sweep["trial_params"], strict=True)
    todo = [(run_id, TrainConfig(**json.loads(p))) for run_id, p in trials if run_id not in done]
    images, labels = data.load(spec["dataset"], "train", data_dir)
    total = len(sweep["trial_ids"])
    if resume is not None:
        log(f"Resuming sweep {sweep_id}: {len(todo)} of {total} trials have no run yet.")
    else:
        log(f"Sweep {sweep_id}: {total} trial(s) of {spec['epochs']} epoch(s).")
    _write_sweep(store, sweep, "running", 0.0)
    from mnist_ray.session import connect

    started = time.perf_counter()
    try:
        with connect(address, log=log):
            failed, stopped = _tune(spec, store, sweep_id, todo, images, labels, log)
            if spec["evaluate"]:
                _evaluate(store, sweep_id, spec, data_dir, log)
    except BaseException as exc:  # the row says how it ended; trials that finished keep runs
        how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _write_sweep(store, sweep, how, time.perf_counter() - started)
        raise
    seconds = time.perf_counter() - started
    row, runs = _write_sweep(store, sweep, "finished", seconds, failed, stopped)
    return {**row, **leaderboard(store, row, runs)}


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


def _tune(spec, store, sweep_id, todo, images, labels, log) -> tuple[list[str], list[str]]:
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
    }
    scheduler = None
    if spec["early_stop"]:  # stop trials whose cost trails the others' at the same epoch
        scheduler = ASHAScheduler(
            time_attr="epoch", metric="cost", mode="min", max_t=spec["epochs"], grace_period=1
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
    from mnist_ray.cluster import evaluate_and_store

    evaluated = {e["run_id"] for e in read_rows(store, "evaluations")[0]}
    runs = [r for r in sweep_runs(store, sweep_id) if r["run_id"] not in evaluated]
    if not runs:
        return
    images, labels = data.load(spec["dataset"], "test", data_dir)
    for run in runs:  # on the connected Ray: evaluate_and_store's connect() reuses it
        weights = store.read_weights(run)
        row = evaluate_and_store(run, weights, images, labels, store, None, spec["shards"], log)
        log(f"Evaluated {run['run_id']}: accuracy {row['accuracy']:.4f}")


# ---- the sweep row and the leaderboard ----------------------------------------------------------


def sweep_runs(store: Store, sweep_id: str) -> list[dict]:
    return [r for r in read_rows(store, "runs")[0] if r.get("sweep_id") == sweep_id]


def load_sweep(store: Store, sweep_id: str) -> dict:
    check_id(sweep_id, "resume")
    rows = [r for r in read_rows(store, "sweeps")[0] if r["sweep_id"] == sweep_id]
    if not rows:
        raise StoreError(f"no such sweep in {store.location}", about="resume", value=sweep_id)
    return rows[0]


def _write_sweep(store, sweep, status, seconds, failed=(), stopped=()) -> tuple[dict, dict]:
    """Write the sweep row as it stands (rewritten in place), `stopped` added to the trials
    stopped before; returns it and the sweep's runs by id, for the leaderboard."""
    runs = {r["run_id"]: r for r in sweep_runs(store, sweep["sweep_id"])}
    finished = [t for t in sweep["trial_ids"] if t in runs]
    best = min(finished, key=lambda t: runs[t]["epoch_costs"][-1], default=None)
    row = {
        **sweep,
        "updated_at": now(),
        "status": status,
        "finished": finished,
        "stopped": [*sweep["stopped"], *stopped],
        "failed": list(failed),
        "best_run_id": best,
        "best_cost": runs[best]["epoch_costs"][-1] if best else None,
        "wall_seconds": seconds,
    }
    store.write_row("sweeps", row)
    return row, runs


def leaderboard(store: Store, sweep: dict, runs: dict[str, dict]) -> dict:
    """Trials best first (finished by final cost, then stopped, failed, missing) and the
    parameters that vary across them."""
    params = [json.loads(p) for p in sweep["trial_params"]]
    varying = [n for n in PARAMS if len({p[n] for p in params}) > 1]
    accuracy = {e["run_id"]: e["accuracy"] for e in read_rows(store, "evaluations")[0]}
    failed = dict(f.split(": ", 1) for f in sweep["failed"])
    status = dict.fromkeys(sweep["trial_ids"], "missing")  # each later one wins
    status |= dict.fromkeys(sweep["stopped"], "stopped")
    status |= dict.fromkeys(failed, "failed") | dict.fromkeys(runs, "finished")
    rows = []
    for run_id, p in zip(sweep["trial_ids"], params, strict=True):
        run = runs.get(run_id, {})
        rows.append(
            {
                "run_id": run_id,
                **{n: p[n] for n in PARAMS},
                "status": status[run_id],
                "final_cost": run["epoch_costs"][-1] if run else None,
                "train_seconds": run.get("train_seconds"),
                "peak_rss_mib": run.get("peak_rss_mib"),
                "accuracy": accuracy.get(run_id),
                "error": failed.get(run_id),
            }
        )
    order = ("finished", "stopped", "failed", "missing")
    rows.sort(key=lambda r: (order.index(r["status"]), r["final_cost"] or 0.0))
    return {"varying": varying, "trials": rows}

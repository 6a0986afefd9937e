"""What a sweep tries and what it has to show for it: the options parsed and checked, the
trials planned, the sweep row, the leaderboard. No Ray here: sweep.py runs the trials.

    from mnist_ray.sweepplan import definition, plan, new_sweep, leaderboard
    spec = definition(model="softmax,mlp", seed="777,1", epochs=2)   # a 2 x 2 grid
    for run_id, cfg in plan(spec, "sweep-a"):         # each trial: its run id, its config
        print(run_id, cfg.model, cfg.optimizer, cfg.lr)   # lab defaults filled in per model
    sweep = new_sweep(spec)                           # the sweep row as it starts
    board = leaderboard(store, written_row, runs)     # {"varying": [...], "trials": [...]}

What to try is decided here, before Tune sees it: comma lists make a grid, ranges
(`0.001..1`, log-uniform for the learning rate) are drawn from `--search-seed` with
numpy. Models and optimizers are lists only (a range of names means nothing); a model
trains with its lab's optimizer and learning rate unless `--optimizer`/`--lr` say
otherwise. So the same command always makes the same trials, and the sweep row holds
the full list, which is what `--resume` needs: it runs exactly the trials with no run
row yet.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np

from mnist_ray.config import (
    CHECKPOINT_EVERY,
    DEFAULT_MODEL,
    ConfigError,
    EvalConfig,
    TrainConfig,
    check_id,
)
from mnist_ray.query import read_rows
from mnist_ray.store import Store, StoreError, new_id, now

PARAMS = ("lr", "batch_size", "seed")  # numbers: a list or a range
CHOICES = ("model", "optimizer")  # names: a list
AXES = (*CHOICES, *PARAMS)  # what a sweep varies; epochs and dataset are one value
FINISHED = (None, "finished")  # a run's status; null in stores older than the column
MAX_TRIALS = 10_000  # a typo like --seed 1..100000 with --samples must not plan forever


def parse_values(name: str, text: str | None) -> list | dict:
    """`0.01,0.1` -> [0.01, 0.1] (a grid axis); `0.001..1` -> {"range": [0.001, 1.0]};
    None -> [None] (the model's lab default, for lr)."""
    if text is None:
        return [None]
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
    return _distinct(name, text, [one(w) for w in text.split(",")])


def parse_names(name: str, text: str | None) -> list:
    """`softmax,mlp` -> ["softmax", "mlp"]; None -> [None] (each model's lab optimizer)."""
    if text is None:
        return [None]
    names = [w.strip() for w in text.split(",")]
    if "" in names:
        raise ConfigError(name, f"{text!r}: an empty name in the list")
    return _distinct(name, text, names)


def _distinct(name: str, text: str, values: list) -> list:
    if len(set(values)) != len(values):
        raise ConfigError(name, f"{text}: a value is given twice")
    return values


def definition(
    lr: str | None = None,  # None: each model's lab rate (0.1 for softmax: the tutorial's run)
    *,
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
    model: str = DEFAULT_MODEL,
    optimizer: str | None = None,  # None: each model's lab optimizer
    train_options: dict | None = None,  # opt-in TrainConfig settings, the same in every trial
) -> dict:
    """What the user asked for, checked, as a JSON-able dict (kept in the sweep row)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    fixed = {k: v for k, v in (train_options or {}).items() if v not in (None, defaults[k])}
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
        "model": parse_names("model", model),
        "optimizer": parse_names("optimizer", optimizer),
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
        "train_options": fixed,
    }
    # Every model with every optimizer, now: a bad name, or a model with no lab default
    # and no --optimizer/--lr, is refused before anything starts.
    some_lr = spec["lr"][0] if isinstance(spec["lr"], list) else spec["lr"]["range"][0]
    for name, opt in itertools.product(spec["model"], spec["optimizer"]):
        TrainConfig(model=name, optimizer=opt, lr=some_lr, epochs=epochs, **fixed).validate()
    count = samples * math.prod(len(v) for n in AXES if isinstance(v := spec[n], list))
    if count > MAX_TRIALS:
        raise ConfigError("samples", f"the sweep would have {count} trials, over {MAX_TRIALS}")
    return spec


def plan(spec: dict, sweep_id: str) -> list[tuple[str, TrainConfig]]:
    """The trials, in order, as (run_id, config): every grid point `samples` times, each
    range drawn anew per trial from one generator seeded by search_seed (reproducible)."""
    rng = np.random.default_rng(spec["search_seed"])
    # A range is one point of its axis, drawn per trial below. (A definition written
    # before models has no model or optimizer: the tutorial's.)
    defaults = {"model": [DEFAULT_MODEL], "optimizer": [None]}
    axes = [v if isinstance(v := spec.get(n, defaults.get(n)), list) else [v] for n in AXES]
    trials = []
    for _ in range(spec["samples"]):
        for point in itertools.product(*axes):
            values = dict(zip(AXES, point, strict=True))
            for name in PARAMS:
                if isinstance(values[name], dict):
                    values[name] = _draw(rng, name, *values[name]["range"])
            fixed = spec.get("train_options") or {}  # older definitions: none
            cfg = TrainConfig(dataset=spec["dataset"], epochs=spec["epochs"], **values, **fixed)
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


def planned(sweep: dict) -> list[tuple[str, TrainConfig]]:
    """A sweep row's trials as planned, (run_id, config), in order."""
    params = [TrainConfig(**json.loads(p)) for p in sweep["trial_params"]]
    return list(zip(sweep["trial_ids"], params, strict=True))


# ---- the sweep row and the leaderboard ----------------------------------------------------------


def sweep_runs(store: Store, sweep_id: str) -> list[dict]:
    """The sweep's finished runs (a run row that is not finished is a trial to run again)."""
    rows = read_rows(store, "runs")[0]
    return [
        r for r in rows if r.get("sweep_id") == sweep_id and r.get("status", "finished") in FINISHED
    ]


def load_sweep(store: Store, sweep_id: str) -> dict:
    check_id(sweep_id, "resume")
    rows = [r for r in read_rows(store, "sweeps")[0] if r["sweep_id"] == sweep_id]
    if not rows:
        raise StoreError(f"no such sweep in {store.location}", about="resume", value=sweep_id)
    return rows[0]


def write_sweep(store, sweep, status, seconds, failed=(), stopped=()) -> tuple[dict, dict]:
    """Write the sweep row as it stands (rewritten in place), `stopped` added to the trials
    stopped before; returns it and the sweep's runs by id, for the leaderboard."""
    runs = {r["run_id"]: r for r in sweep_runs(store, sweep["sweep_id"])}
    finished = [t for t in sweep["trial_ids"] if t in runs]
    best = min(finished, key=lambda t: rank(runs[t]), default=None)
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


def validated_accuracy(run: dict) -> float | None:
    """With a validation split: the validation accuracy of the weights the run kept (its
    best epoch's with --keep best, else its last's); None without one."""
    accuracies = run.get("val_accuracies")
    if not accuracies:
        return None
    if run.get("keep") == "best" and run.get("best_epoch"):
        return accuracies[run["best_epoch"] - 1]
    return accuracies[-1]


def rank(run: dict) -> tuple:
    """Best first: by validation accuracy where the trials hold some out (never by the
    test set), else by final training cost."""
    accuracy = validated_accuracy(run)
    return (-accuracy if accuracy is not None else 0.0, run["epoch_costs"][-1])


def leaderboard(store: Store, sweep: dict, runs: dict[str, dict]) -> dict:
    """Trials best first (finished by final cost, then stopped, failed, missing) and the
    parameters that vary across them (the model first, when the trials differ in it)."""
    params = [cfg.to_dict() for _, cfg in planned(sweep)]  # an old row's: softmax, sgd
    varying = [n for n in AXES if len({p[n] for p in params}) > 1]
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
                **{n: p[n] for n in AXES},
                "status": status[run_id],
                "final_cost": run["epoch_costs"][-1] if run else None,
                "val_accuracy": validated_accuracy(run) if run else None,
                "train_seconds": run.get("train_seconds"),
                "peak_rss_mib": run.get("peak_rss_mib"),
                "accuracy": accuracy.get(run_id),
                "error": failed.get(run_id),
            }
        )
    order = ("finished", "stopped", "failed", "missing")
    rows.sort(
        key=lambda r: (
            order.index(r["status"]),
            -(r["val_accuracy"] or 0.0),
            r["final_cost"] or 0.0,
        )
    )
    return {"varying": varying, "trials": rows}

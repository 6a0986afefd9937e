"""The store's tables: one explicit `pa.schema` each, and the rows built from them.

    from mnist_ray.schema import RUNS, run_row
    row = run_row(run_id="run-1", created_at=now(), ...)   # every column of RUNS, by name
    run_row(run_id="run-1", atempts=2, ...)   # RowError: runs row: unknown column 'atempts'

A row is a dict with the schema's columns in the schema's order. `pa.Table.from_pylist`
would drop a misspelt key and write a missing one as null without a word; the builders
refuse both, naming the table and the key, so a row that reaches the store has exactly
the columns its readers expect. A column in OPTIONAL (added after the first release, so
null in older files) may be left out and is then null.
"""

from __future__ import annotations

import pyarrow as pa

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("dataset", pa.string()),
        ("epochs", pa.int32()),
        ("batch_size", pa.int32()),
        ("lr", pa.float64()),
        ("seed", pa.int64()),
        ("device", pa.string()),  # what torch trained on, e.g. "cuda:0 (NVIDIA H100 ...)"
        ("node_id", pa.string()),  # the Ray node the training task ran on
        ("hostname", pa.string()),
        ("gpu_ids", pa.list_(pa.int32())),  # what Ray assigned to the task
        ("cuda_graph", pa.bool_()),
        ("epoch_costs", pa.list_(pa.float64())),
        ("train_seconds", pa.float64()),
        # How many times the training ran: 1, more if Ray retried the task (its attempt
        # number) or Tune restarted the sweep trial (counted by marks in the store).
        ("attempts", pa.int32()),
        ("weights_uri", pa.string()),
        ("weights_sha256", pa.string()),  # of the safetensors file: its integrity check
        ("torch_version", pa.string()),
        ("ray_version", pa.string()),
        ("peak_rss_mib", pa.float64()),  # the training task's process, at its peak
        ("gpu_peak_mib", pa.float64()),  # torch's peak allocation on the GPU; null on a CPU
        ("sweep_id", pa.string()),  # the sweep this run was a trial of; null for a single run
        ("model", pa.string()),  # softmax, mlp, cnn, ... or a user's net.py:Net, pkg.mod:make
        ("optimizer", pa.string()),  # sgd, adam, adamw, ... (config.OPTIMIZERS)
        ("threads", pa.int32()),  # torch's threads in the training task; null on a GPU
        # A user's model file (--model FILE.py:NAME), its text, to build it again later;
        # null for a built-in model and for package.module:NAME.
        ("model_source", pa.string()),
        # The run's state: a row is written when training starts (running) and replaced
        # as it ends (finished, interrupted, failed); readers keep the newest per run_id.
        ("updated_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),  # running, finished, interrupted, failed
        ("failure", pa.string()),  # a failed run's cause, one line
        # What `submit train --resume` needs besides the TrainConfig columns above:
        ("cpus", pa.int32()),  # CPUs the training task asked for (torch's threads on a CPU)
        ("gpus", pa.string()),  # the --gpus request: auto, 0 or 1
        ("checkpoint_every", pa.float64()),  # seconds between checkpoints
        # The model exported to ONNX after training (weights/<run_id>.onnx, artifact.py),
        # what the shards score with; null for a user's model and for older runs.
        ("onnx_sha256", pa.string()),
        # sha256 over the tensors alone (store.tensors_digest): equal for identical weights
        ("weights_digest", pa.string()),
        # Why the model was not exported to ONNX when an export was tried and failed (it
        # then evaluates in torch); null when it exported or was not meant to.
        ("export_failure", pa.string()),
        # Opt-in training settings (TrainConfig; null in older runs: the course's way).
        ("model_args", pa.string()),  # a user's model's constructor arguments, JSON
        ("weight_decay", pa.float64()),
        ("momentum", pa.float64()),
        ("optimizer_args", pa.string()),  # the optimizer's other arguments, JSON
        ("lr_schedule", pa.string()),  # constant, cosine, step, onecycle
        ("lr_step", pa.int32()),
        ("lr_gamma", pa.float64()),
        ("warmup_epochs", pa.int32()),
        ("val_split", pa.float64()),  # the fraction of the training set held out
        ("keep", pa.string()),  # last, best (by validation accuracy)
        ("patience", pa.int32()),
        # What training produced with them:
        ("lrs", pa.list_(pa.float64())),  # each epoch's learning rate, at its first step
        ("val_costs", pa.list_(pa.float64())),  # with a validation split, each epoch's
        ("val_accuracies", pa.list_(pa.float64())),
        ("best_epoch", pa.int32()),  # the best epoch by validation accuracy
        ("stopped_early", pa.bool_()),  # --patience ended the run before its epochs
        # The .py files that were beside a user's model file (`from blocks import Block`),
        # a JSON object {relative path: text}; null when there were none.
        ("model_files", pa.string()),
    ]
)
# A run's identity and settings, in every row of it; the rest (what training produced)
# is null until the run is finished.
RUN_SETTINGS = ["run_id", "created_at", "dataset", "epochs", "batch_size", "lr", "seed"]

EVALUATIONS = pa.schema(
    [
        ("eval_id", pa.string()),
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("dataset", pa.string()),
        ("shards", pa.int32()),
        ("accuracy", pa.float64()),
        ("correct", pa.int64()),
        ("total", pa.int64()),
        ("per_class_accuracy", pa.list_(pa.float64())),
        ("confusion", pa.list_(pa.int64())),  # 10x10, row-major, row = true label
        ("sample_index", pa.int32()),
        ("sample_label", pa.int32()),
        ("sample_prediction", pa.int32()),
        ("sample_probabilities", pa.list_(pa.float64())),
        ("sample_pixels", pa.list_(pa.uint8())),  # 28x28, row-major, 0..255
        ("eval_seconds", pa.float64()),
        ("node_ids", pa.list_(pa.string())),  # the Ray nodes the shards ran on
        ("shard_peak_rss_mib", pa.float64()),  # the largest shard task's process, at its peak
        # The first 25 misclassified test images, in test-set order (the report's grid):
        ("misclassified_index", pa.list_(pa.int32())),
        ("misclassified_label", pa.list_(pa.int32())),
        ("misclassified_prediction", pa.list_(pa.int32())),
        # Each image its 784 bytes, 28x28 row-major: a byte string per image reads and
        # writes many times faster than a list of 784 numbers.
        ("misclassified_pixels", pa.list_(pa.binary())),
        ("engine", pa.string()),  # what scored the images: "onnxruntime 1.32.0", "torch 2.14.1"
    ]
)

SWEEPS = pa.schema(
    [
        ("sweep_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),  # the row is rewritten as the sweep goes
        ("status", pa.string()),  # running, finished, interrupted, failed
        ("definition", pa.string()),  # JSON: what was asked (lists, ranges, resources, ...)
        ("trial_ids", pa.list_(pa.string())),  # every trial's run_id, in order
        ("trial_params", pa.list_(pa.string())),  # JSON: each trial's TrainConfig
        ("finished", pa.list_(pa.string())),  # run_ids with a run row
        ("stopped", pa.list_(pa.string())),  # run_ids ended early by the scheduler (ASHA)
        ("failed", pa.list_(pa.string())),  # "run_id: cause", one per failed trial
        ("best_run_id", pa.string()),  # lowest final cost among the finished trials
        ("best_cost", pa.float64()),
        ("wall_seconds", pa.float64()),  # this invocation's Tune experiment, start to end
    ]
)

SCHEMAS = {"runs": RUNS, "evaluations": EVALUATIONS, "sweeps": SWEEPS}
KEYS = {"runs": "run_id", "evaluations": "eval_id", "sweeps": "sweep_id"}  # one file per id
# Columns added after the first release: read as null from files written before them, and
# the only columns a row may leave out (it is then null there too).
OPTIONAL = {"peak_rss_mib", "gpu_peak_mib", "shard_peak_rss_mib", "sweep_id"}
OPTIONAL |= {f"misclassified_{c}" for c in ("index", "label", "prediction", "pixels")}
OPTIONAL |= {"model", "optimizer", "threads", "model_source", "model_files"}
OPTIONAL |= {"updated_at", "status", "failure", "cpus", "gpus", "checkpoint_every"}
OPTIONAL |= {"onnx_sha256", "engine", "weights_digest", "export_failure"}
OPTIONAL |= {"model_args", "weight_decay", "momentum", "optimizer_args", "lr_schedule"}
OPTIONAL |= {"lr_step", "lr_gamma", "warmup_epochs", "val_split", "keep", "patience"}
OPTIONAL |= {"lrs", "val_costs", "val_accuracies", "best_epoch", "stopped_early"}
# Names optional in one table and required in another: a sweep row always has its status.
REQUIRED = {"sweeps": {"updated_at", "status"}}


def optional(table: str) -> set[str]:
    """The columns of `table` a row may leave out, and a file may lack."""
    return OPTIONAL - REQUIRED.get(table, set())


# What a null means in a column added after the first release, where it has a meaning:
# every run before models was the tutorial's softmax regression trained by plain SGD.
# The readers (query.py) fill these in, so no other module sees such a null.
# Every run before statuses was stored when it finished.
READ_AS = {
    ("runs", "model"): "softmax",
    ("runs", "optimizer"): "sgd",
    ("runs", "status"): "finished",
}


class RowError(ValueError):
    """A row that does not fit its table's schema: a bug in the code that built it."""


def make_row(table: str, values: dict) -> dict:
    """`values` as a row of `table`, in the schema's column order. Refuses a key the
    schema lacks and a missing column that is not OPTIONAL (None is a value: give it)."""
    names = SCHEMAS[table].names
    unknown = [k for k in values if k not in names]
    if unknown:
        raise RowError(f"{table} row: unknown {_columns(unknown)} (not in the {table} schema)")
    missing = [n for n in names if n not in values and n not in optional(table)]
    if missing:
        raise RowError(f"{table} row: missing {_columns(missing)}")
    return {n: values.get(n) for n in names}


def run_row(**values) -> dict:
    """A row of `runs`: one training run (see RUNS)."""
    return make_row("runs", values)


def finished_run_row(outcome, **values) -> dict:
    """A finished run's row: every field of `outcome` (a TrainOutcome) that is a column of
    RUNS, as it is, and `values` for the rest (settings, where the weights went, ...)."""
    from dataclasses import fields

    produced = {f.name: getattr(outcome, f.name) for f in fields(outcome) if f.name in RUNS.names}
    return run_row(**produced | values)


def evaluation_row(**values) -> dict:
    """A row of `evaluations`: one evaluation of a run's weights (see EVALUATIONS)."""
    return make_row("evaluations", values)


def sweep_row(**values) -> dict:
    """A row of `sweeps`: one sweep as it stands (see SWEEPS)."""
    return make_row("sweeps", values)


def _columns(names: list[str]) -> str:
    return f"column{'s' if len(names) > 1 else ''} " + ", ".join(repr(n) for n in names)

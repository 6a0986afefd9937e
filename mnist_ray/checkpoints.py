"""Training checkpoints in the store, so a retried training task resumes.

    <store>/checkpoints/<run_id>/epoch-00000003.safetensors
    <store>/checkpoints/<run_id>/attempt-<random>.attempt   (a sweep trial's attempts)

Written as often as `--checkpoint-every` says (a clock, not every epoch: a GPU epoch
takes milliseconds and must not wait on storage). Each holds the weights, torch's
global RNG state (it draws every epoch's shuffle, and dropout's masks on the CPU), the
CUDA RNG state on a GPU (dropout's masks there), the optimizer's state (Adam's step
count and moments; plain SGD keeps none) and the costs so far: with them a resumed run
takes exactly the steps an uninterrupted one takes. safetensors, no pickle.

    from mnist_ray import checkpoints
    checkpoints.save(store, run_id, run.checkpoint())     # run: a train.Training
    ckpt = checkpoints.latest(store, run_id, shapes=None)  # None: Training checks the shapes
"""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mnist_ray.config import WEIGHT_SHAPES, check_id
from mnist_ray.store import Store, StoreError, decode_tensors, encode_tensors


@dataclass
class Checkpoint:
    """The state after `epoch` completed epochs: enough to resume bit-identically."""

    epoch: int
    epoch_costs: list[float]
    weights: dict[str, np.ndarray]
    rng_state: np.ndarray  # torch's global CPU generator state, uint8
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)  # "<param index>.<name>"
    cuda_rng_state: np.ndarray | None = None  # the training GPU's generator state, uint8
    # With a validation split: each epoch's figures, the best epoch so far (by accuracy)
    # and, with --keep best, its weights.
    val_costs: list[float] = field(default_factory=list)
    val_accuracies: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_weights: dict[str, np.ndarray] = field(default_factory=dict)


_NAME = re.compile(r"epoch-(\d+)\.safetensors$")


def folder(run_id: str) -> str:
    return f"checkpoints/{check_id(run_id)}"


def save(store: Store, run_id: str, ckpt: Checkpoint) -> str:
    arrays = {f"weights.{k}": v for k, v in ckpt.weights.items()}
    arrays |= {f"optimizer.{k}": v for k, v in ckpt.optimizer.items()}
    arrays["rng_state"] = np.asarray(ckpt.rng_state, dtype=np.uint8)
    if ckpt.cuda_rng_state is not None:
        arrays["cuda_rng_state"] = np.asarray(ckpt.cuda_rng_state, dtype=np.uint8)
    arrays["epoch_costs"] = np.asarray(ckpt.epoch_costs, dtype=np.float64)
    arrays |= {f"best.{k}": v for k, v in ckpt.best_weights.items()}
    if ckpt.val_costs:
        arrays["val_costs"] = np.asarray(ckpt.val_costs, dtype=np.float64)
        arrays["val_accuracies"] = np.asarray(ckpt.val_accuracies, dtype=np.float64)
    if ckpt.best_epoch is not None:
        arrays["best_epoch"] = np.asarray([ckpt.best_epoch], dtype=np.int64)
    data = encode_tensors(arrays, {"run_id": run_id, "epoch": str(ckpt.epoch)})
    return store.write_bytes(f"{folder(run_id)}/epoch-{ckpt.epoch:08d}.safetensors", data)


def latest(
    store: Store, run_id: str, shapes: dict[str, tuple[int, ...]] | None = WEIGHT_SHAPES
) -> Checkpoint | None:
    """The newest checkpoint of a run, or None when it has none. Its weights must have
    `shapes` (the softmax model's by default; None: not checked here, as when the
    model's own load checks them)."""
    numbered = [
        (int(m.group(1)), name)
        for name in store.list(folder(run_id), ".safetensors")
        if (m := _NAME.search(name))
    ]
    if not numbered:
        return None
    relpath = max(numbered)[1]  # by the number, not the name: any epoch count, any padding
    arrays = decode_tensors(store.read_bytes(relpath), store.uri(relpath))
    weights, optimizer = _prefixed(arrays, "weights."), _prefixed(arrays, "optimizer.")
    wrong = shapes is not None and {k: v.shape for k, v in weights.items()} != shapes
    if wrong or not weights or "rng_state" not in arrays:
        raise StoreError(f"{store.uri(relpath)}: not a checkpoint of this model")
    costs = arrays["epoch_costs"].tolist()
    return Checkpoint(
        epoch=len(costs),
        epoch_costs=costs,
        weights=weights,
        rng_state=arrays["rng_state"],
        optimizer=optimizer,
        cuda_rng_state=arrays.get("cuda_rng_state"),
        val_costs=arrays["val_costs"].tolist() if "val_costs" in arrays else [],
        val_accuracies=arrays["val_accuracies"].tolist() if "val_accuracies" in arrays else [],
        best_epoch=int(arrays["best_epoch"][0]) if "best_epoch" in arrays else None,
        best_weights=_prefixed(arrays, "best."),
    )


def newest_epochs(store: Store, run_ids: list[str]) -> dict[str, int]:
    """The epoch of each run's newest checkpoint, for the runs that have one: one listing
    of the checkpoints folder, however many runs are asked about."""
    wanted = set(run_ids)
    if not wanted:
        return {}
    selector = pafs.FileSelector(store.path("checkpoints"), recursive=True, allow_not_found=True)
    try:
        infos = store.fs.get_file_info(selector)
    except (OSError, pa.ArrowException):
        return {}  # unreadable: the runs are shown without it
    found: dict[str, int] = {}
    for info in infos:
        *_, run_id, name = ["", *info.path.rsplit("/", 2)]
        if run_id in wanted and (m := _NAME.search(name)):
            found[run_id] = max(found.get(run_id, 0), int(m.group(1)))
    return found


def _prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}


def count_attempt(store: Store, run_id: str) -> int:
    """Mark one more attempt at a run and return how many there have been. For a sweep
    trial: Tune restarts a trial whose worker died as a new actor, where Ray's attempt
    number starts at 0 again, so the attempts are counted where they leave a trace; the
    marks go with the checkpoints when the run is stored."""
    store.write_bytes(f"{folder(run_id)}/attempt-{secrets.token_hex(8)}.attempt", b"")
    return len(store.list(folder(run_id), ".attempt"))


def clear(store: Store, run_id: str) -> None:
    """Drop a finished run's checkpoints; its weights file is what stays."""
    with contextlib.suppress(OSError, FileNotFoundError):
        store.fs.delete_dir(store.path(folder(run_id)))

"""Per-epoch training checkpoints in the store, so a retried training task resumes.

    <store>/checkpoints/<run_id>/epoch-0003.safetensors

Each holds the weights, the optimizer's state (plain SGD keeps none), torch's global
RNG state (it draws every epoch's shuffle) and the costs so far: with them a resumed
run takes exactly the steps an uninterrupted one takes. safetensors, no pickle.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from mnist_ray.config import WEIGHT_SHAPES, check_id
from mnist_ray.store import Store, StoreError, decode_tensors, encode_tensors


@dataclass
class Checkpoint:
    """The state after `epoch` completed epochs: enough to resume bit-identically."""

    epoch: int
    epoch_costs: list[float]
    weights: dict[str, np.ndarray]
    rng_state: np.ndarray  # torch's global CPU generator state, uint8
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)


def folder(run_id: str) -> str:
    return f"checkpoints/{check_id(run_id)}"


def save(store: Store, run_id: str, ckpt: Checkpoint) -> str:
    arrays = {f"weights.{k}": v for k, v in ckpt.weights.items()}
    arrays |= {f"optimizer.{k}": v for k, v in ckpt.optimizer_state.items()}
    arrays["rng_state"] = np.asarray(ckpt.rng_state, dtype=np.uint8)
    arrays["epoch_costs"] = np.asarray(ckpt.epoch_costs, dtype=np.float64)
    data = encode_tensors(arrays, {"run_id": run_id, "epoch": str(ckpt.epoch)})
    return store.write_bytes(f"{folder(run_id)}/epoch-{ckpt.epoch:04d}.safetensors", data)


def latest(store: Store, run_id: str) -> Checkpoint | None:
    """The newest checkpoint of a run, or None when it has none."""
    names = store.list(folder(run_id), ".safetensors")
    if not names:
        return None
    relpath = names[-1]  # epoch-NNNN sorts by epoch
    arrays = decode_tensors(store.read_bytes(relpath), store.uri(relpath))
    weights = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("weights.")}
    if {k: v.shape for k, v in weights.items()} != WEIGHT_SHAPES or "rng_state" not in arrays:
        raise StoreError(f"{store.uri(relpath)}: not a checkpoint of this model")
    costs = arrays["epoch_costs"].tolist()
    return Checkpoint(
        epoch=len(costs),
        epoch_costs=costs,
        weights=weights,
        rng_state=arrays["rng_state"],
        optimizer_state={
            k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer.")
        },
    )


def costs(store: Store, run_id: str) -> list[float]:
    """The epoch costs of a run's newest checkpoint, for progress; [] if none can be read."""
    try:
        ckpt = latest(store, run_id)
    except (StoreError, KeyError):  # an odd file there: no progress line, not an error
        return []
    return ckpt.epoch_costs if ckpt else []


def clear(store: Store, run_id: str) -> None:
    """Drop a finished run's checkpoints; its weights file is what stays."""
    with contextlib.suppress(OSError, FileNotFoundError):
        store.fs.delete_dir(store.path(folder(run_id)))

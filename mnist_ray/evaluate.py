"""Evaluation: counts on one shard of the test set, and the merge of all shards.

    from mnist_ray.evaluate import evaluate_shard, merge, shard_bounds
    parts = [evaluate_shard(weights, images, labels, start, stop, model="cnn")
             for start, stop in shard_bounds(len(labels), 4)]
    merge(parts)["accuracy"]        # 0.9226 for the tutorial's softmax weights

The scores are the model's own forward (model.py) in eval mode (no dropout): its graph
exported after training, in ONNX Runtime, for a run that has one (artifact.py: every
built-in model's run since the export came), else the module in torch under
`torch.no_grad()`. Test pixels are scaled to 0..1 exactly as in training (the tutorial
fed them as 0..255 and printed 0.8883; the right figure is 0.9226).

A float32 forward can give an image slightly different scores depending on how many
images share the call (a convolution or a matrix product picks its blocking by batch
size), so images go through in fixed micro-batches of MICRO_BATCH aligned to their
positions in the whole test set: image i is always scored in the batch
[100*(i//100), 100*(i//100)+100). A shard whose ends fall inside such a batch scores
the whole batch and keeps its own rows. So every image's scores, every count and the
sample are identical for every shard count. Neither torch nor onnxruntime is imported
with this module, only by the path that scores: the driver evaluates nothing.
"""

from __future__ import annotations

import random
import warnings
from typing import TYPE_CHECKING

import numpy as np

from mnist_ray import artifact
from mnist_ray.config import IMAGE_SHAPE, MICRO_BATCH, NUM_CLASSES

if TYPE_CHECKING:
    from torch import nn

MISCLASSIFIED_KEPT = 25  # the first misclassified test images an evaluation keeps, for the report


def shard_bounds(total: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices, shard i = [i*total//shards, (i+1)*total//shards)."""
    if not 1 <= shards <= total:
        raise ValueError(f"shards must be in 1..{total}, not {shards}")
    return [(i * total // shards, (i + 1) * total // shards) for i in range(shards)]


def sample_index(seed: int, total: int) -> int:
    """The tutorial's random sample: `random.randint(0, total - 1)` right after
    `random.seed(seed)` (training draws nothing from Python's RNG in between)."""
    return random.Random(seed).randint(0, total - 1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits(
    weights: dict[str, np.ndarray] | None,
    images: np.ndarray,
    start: int = 0,
    stop: int | None = None,
    *,
    model: str | nn.Module = "softmax",
    onnx: bytes | None = None,
    model_args: dict | None = None,
) -> np.ndarray:
    """The model's float32 scores for images[start:stop] (uint8, the whole test set in
    `images`), each computed in its aligned micro-batch. `onnx`: the run's exported
    model (artifact.py), scored by ONNX Runtime; else `model`, a name in model.py's
    registry or an nn.Module, holding `weights`, in torch."""
    stop = len(images) if stop is None else stop
    first = start // MICRO_BATCH * MICRO_BATCH
    last = min(len(images), -(-stop // MICRO_BATCH) * MICRO_BATCH)
    scored_by_onnx = onnx is not None
    score = artifact.scorer(onnx) if scored_by_onnx else _torch_scorer(model, weights, model_args)
    scores = [np.zeros((0, NUM_CLASSES), dtype=np.float32)]
    scores += [score(images[a : a + MICRO_BATCH]) for a in range(first, last, MICRO_BATCH)]
    return np.concatenate(scores)[start - first : stop - first]


def _torch_scorer(model: str | nn.Module, weights: dict[str, np.ndarray], args: dict | None):
    """The module's own forward, in torch, under no_grad: uint8 pixels -> float32 scores."""
    import torch

    from mnist_ray.model import with_weights

    module = with_weights(model, weights, args)

    def score(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad(), warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; the forward only reads them.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(pixels)).view(-1, *IMAGE_SHAPE) / 255
            return module(x).float().numpy()  # ToTensor's float(pixel) / 255, as in training

    return score


def engine(onnx: bytes | None) -> str:
    """What scores the images: ONNX Runtime for an exported model, else torch."""
    if onnx is not None:
        return artifact.engine()
    import torch

    return f"torch {torch.__version__}"


def evaluate_shard(
    weights: dict[str, np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    start: int = 0,
    stop: int | None = None,
    *,
    sample: int | None = None,
    model: str | nn.Module = "softmax",
    onnx: bytes | None = None,
    model_args: dict | None = None,
) -> dict:
    """Counts for images[start:stop] of the whole test set `images`: correct, total, and
    this shard's contribution to the 10x10 confusion matrix (row = true label, column =
    prediction). If the test-set index `sample` falls in the shard, its prediction and
    probabilities come back too. `model`: a registry name (a user's made with
    `model_args`), or an nn.Module; `onnx`: the
    run's exported model, scored instead (artifact.py), `weights` then unused."""
    stop = len(labels) if stop is None else stop
    x, y = images[start:stop], np.asarray(labels[start:stop], dtype=np.int64)
    z = logits(weights, images, start, stop, model=model, onnx=onnx, model_args=model_args)
    predicted = z.argmax(axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    part = {
        "start": start,
        "stop": stop,
        "correct": int((predicted == y).sum()),
        "total": int(len(y)),
        "confusion": confusion.tolist(),
        "sample": None,
        "misclassified": _misclassified(x, y, predicted, start),
        "engine": engine(onnx),
    }
    if sample is not None and start <= sample < stop:
        i = sample - start
        part["sample"] = {
            "index": sample,
            "label": int(y[i]),
            "prediction": int(predicted[i]),
            "probabilities": softmax(z[i].astype(np.float64)).tolist(),
            "pixels": np.asarray(x[i], dtype=np.uint8).reshape(-1).tolist(),
        }
    return part


def merge(parts: list[dict]) -> dict:
    """One result from all shards; checks that they cover 0..total-1 exactly once."""
    parts = sorted(parts, key=lambda p: p["start"])
    position = 0
    for p in parts:
        if p["start"] != position:
            raise ValueError(f"shards do not tile the test set: gap or overlap at {position}")
        position = p["stop"]
    confusion = np.sum([np.asarray(p["confusion"], dtype=np.int64) for p in parts], axis=0)
    correct = int(np.trace(confusion))
    total = int(confusion.sum())
    if correct != sum(p["correct"] for p in parts) or total != position:
        raise ValueError("shard counts disagree with their confusion rows")
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    samples = [p["sample"] for p in parts if p["sample"] is not None]
    # Each shard kept its first N in test-set order, so the first N overall are among them.
    wrong = [m for p in parts for m in p.get("misclassified", [])][:MISCLASSIFIED_KEPT]
    return {
        "correct": correct,
        "total": total,
        "accuracy": correct / total if total else 0.0,
        "per_class_accuracy": per_class.tolist(),
        "confusion": confusion.reshape(-1).tolist(),
        "sample": samples[0] if samples else None,
        "misclassified": wrong,
        "engine": ", ".join(sorted({p["engine"] for p in parts})),
    }


def _misclassified(x: np.ndarray, y: np.ndarray, predicted: np.ndarray, start: int) -> list[dict]:
    """The shard's first MISCLASSIFIED_KEPT wrong predictions, in test-set order."""
    (where,) = np.nonzero(predicted != y)
    return [
        {
            "index": start + int(i),
            "label": int(y[i]),
            "prediction": int(predicted[i]),
            "pixels": np.asarray(x[i], dtype=np.uint8).reshape(-1).tolist(),
        }
        for i in where[:MISCLASSIFIED_KEPT]
    ]


def misclassified_columns(merged: dict) -> dict:
    """The evaluation row's misclassified_* columns, from merge's result."""
    wrong = merged.get("misclassified") or []
    return {
        "misclassified_index": [m["index"] for m in wrong],
        "misclassified_label": [m["label"] for m in wrong],
        "misclassified_prediction": [m["prediction"] for m in wrong],
        "misclassified_pixels": [bytes(bytearray(m["pixels"])) for m in wrong],
    }

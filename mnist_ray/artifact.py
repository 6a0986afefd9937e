"""What evaluation scores with: a built-in model's trained module exported once to ONNX,
in the training task, so that shard tasks score with ONNX Runtime and never import torch;
else (a model that did not export, an older run) the run's weights, in torch.

    data = export("cnn", weights)        # the training task (torch is loaded there)
    score = scorer(data)                 # a shard task: onnxruntime only
    score(pixels)                        # (n <= 100, 784) uint8 -> (n, 10) float32 scores
    weights, onnx = scoring(store, run)  # the evaluate driver: one of the two, checked

Why: a fresh shard worker spends 1.5-2.5 s importing torch before its first image, and
more on a busy node, where onnxruntime imports in 0.1 s; a CNN's forward is faster there
too (bench/bench_eval.py). The graph is the module's own forward, traced by
torch.onnx.export (no layer is written a second time), for a fixed batch of MICRO_BATCH
images: every image is still scored in its aligned micro-batch (evaluate.py), so results
do not depend on the shard count. The scores agree with torch's to about 1e-5 (float32
sums taken in another order), and every built-in model's counts are torch's
(tests/test_artifact.py).

A user's model is exported too, and kept only when the graph's scores equal its torch
forward's on a check batch to CHECK_TOLERANCE: a module may branch in Python on its input,
which a trace would freeze into the graph without a word. Where the check fails, its
shards run its own forward in torch, and the row's export_failure says why.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np

from mnist_ray import usermodel
from mnist_ray.config import (
    DEFAULT_MODEL,
    IMAGE_SHAPE,
    IN_FEATURES,
    MICRO_BATCH,
    NUM_CLASSES,
    WEIGHT_SHAPES,
    first_line,
)
from mnist_ray.store import Store, StoreError


def engine() -> str:
    """What scores an exported model's images, as an evaluation row records it."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def export(model: str, weights: dict[str, np.ndarray], args: dict | None = None) -> bytes | None:
    """`model` holding `weights`, as ONNX bytes (see exported)."""
    return exported(model, weights, args)[0]


CHECK_TOLERANCE = 1e-5  # a user's export is kept when its scores are torch's to this (allclose)


def exported(
    model: str, weights: dict[str, np.ndarray], args: dict | None = None
) -> tuple[bytes | None, str | None]:
    """(ONNX bytes, None): `model` (a user's made with `args`) holding `weights`, for a
    batch of MICRO_BATCH images (float32, 0..1) to their (MICRO_BATCH, 10) scores. (None,
    why) where the exporter is not installed or fails (a torch whose exporter changed), or,
    for a user's model, where the exported graph's scores on a check batch are not torch's
    to CHECK_TOLERANCE (a forward that branches in Python on its input, frozen by the
    trace): its shards then use torch, and the trained run is kept either way.
    tests/test_artifact.py holds every built-in model exportable with our versions."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        return None, "the onnx package is not installed (pip install onnx)"
    import torch

    from mnist_ray.model import with_weights

    module = with_weights(model, weights, args)  # on the CPU, in eval mode (no dropout)
    example = torch.zeros((MICRO_BATCH, *IMAGE_SHAPE))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the exporter's notices are about its own future
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, input_names=["images"], output_names=["scores"]
            )  # fmt: skip
    except Exception as exc:  # an optional speed-up must not lose a trained run
        return None, f"torch.onnx.export failed: {type(exc).__name__}: {first_line(exc)}"
    data = buffer.getvalue()
    if usermodel.is_user(model):
        return _checked_export(module, data)
    return data, None


def _checked_export(module, data: bytes) -> tuple[bytes | None, str | None]:
    """A user's export, kept when ONNX Runtime's scores equal torch's on a check batch
    (seeded random pixels, and a blank image) to CHECK_TOLERANCE."""
    import torch

    pixels = np.random.default_rng(0).integers(0, 256, (MICRO_BATCH, IN_FEATURES), np.uint8)
    pixels[0] = 0
    try:
        ours = scorer(data)(pixels)
    except Exception as exc:  # a graph ONNX Runtime can't run
        return None, f"ONNX Runtime can't run the export: {type(exc).__name__}: {first_line(exc)}"
    with torch.no_grad():
        x = torch.from_numpy(pixels).view(MICRO_BATCH, *IMAGE_SHAPE) / 255
        torchs = module(x).float().numpy()
    # float32 sums taken in another order: within 1e-5, absolute and relative (allclose)
    if not np.allclose(ours, torchs, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE):
        off = float(np.abs(ours - torchs).max())
        return None, f"the export's scores differ from torch's by {off:.2g} on a check batch"
    return data, None


def scorer(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """Scores for up to MICRO_BATCH images at a time (uint8 pixels, one row each), on one
    thread: a shard task holds one CPU, and the thread count is part of the arithmetic."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def score(pixels: np.ndarray) -> np.ndarray:
        n = len(pixels)
        x = np.zeros((MICRO_BATCH, IN_FEATURES), dtype=np.float32)  # a short batch: padded
        x[:n] = pixels.reshape(n, IN_FEATURES)
        x /= np.float32(255)  # ToTensor's float(pixel) / 255, bit for bit
        (scores,) = session.run(None, {"images": x.reshape(MICRO_BATCH, *IMAGE_SHAPE)})
        return scores[:n].reshape(n, NUM_CLASSES)

    return score


# ---- what a run is evaluated with, from the store -------------------------------------------


def read_weights(store: Store, run: dict) -> dict[str, np.ndarray]:
    """The run's weights, checked against its model's names and shapes. The softmax
    model's are config.WEIGHT_SHAPES (tests/test_model.py holds them equal to its
    module's), so the classic job's driver never imports torch; another model's shapes
    come from its module (model.py imports torch); a user's file model's from its text
    kept in the row (model_source), so the file itself is no longer needed."""
    if run["model"] == DEFAULT_MODEL:
        return store.read_weights(run, WEIGHT_SHAPES)
    from mnist_ray.model import weight_layout

    if usermodel.is_user(run["model"]):
        try:
            usermodel.restore_run(run)
        except usermodel.ModelError as exc:
            raise StoreError(f"run {run['run_id']}: {exc.line()}") from None
    layout = weight_layout(run["model"], usermodel.run_args(run))
    shapes = {k: shape for k, (shape, _) in layout.items()}
    return store.read_weights(run, shapes, {k: dtype for k, (_, dtype) in layout.items()})


def scoring(store: Store, run: dict) -> tuple[dict[str, np.ndarray] | None, bytes | None]:
    """What the shards evaluate `run` with, as (weights, onnx): its exported model
    (export), checked against the row's sha256, when it has one (the weights are then
    only checked against theirs, not loaded, and the driver imports no torch); else its
    weights (read_weights). A changed file is refused whichever of the two scores."""
    onnx = store.read_artifact(run)
    if onnx is None:
        return read_weights(store, run), None
    store.check_weights(run)
    return None, onnx

"""The model: softmax regression, one linear layer from 784 pixels to 10 class scores.

    from mnist_ray.model import make_model, numpy_logits
    model = make_model()                 # an nn.Module; training calls model(x)
    numpy_logits(weights, images)        # the same forward on numpy arrays, for shard workers

The forward pass is written once, in `forward`, against a small table of operations;
`TORCH` gives the module its operations, `NUMPY` gives evaluation its own. So training
(which calls the module) and evaluation (which calls `numpy_logits`, because a shard
worker that imported torch would spend seconds on the import alone) both follow from
this one function: change it and both change. What could still diverge is the two
tables, and tests/test_model.py fails the moment they disagree, for every model in
MODELS.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from mnist_ray.config import IN_FEATURES, NUM_CLASSES


def forward(x, params, ops):
    """Class scores for a batch of flattened images: the model, once."""
    return ops.linear(x, params["weight"], params["bias"])


# numpy's side: float64, so an image's scores don't depend on how many images share the
# matrix product (every shard count gives the same predictions).
NUMPY = SimpleNamespace(linear=lambda x, w, b: x @ w.T + b)


def numpy_logits(weights: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """The module's forward on uint8 images, scaled to 0..1 exactly as in training."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    params = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    return forward(x, params, NUMPY)


@functools.cache
def _torch_module():
    """The nn.Module class, built on first use so that importing this file needs no torch."""
    import torch.nn.functional as F
    from torch import nn

    ops = SimpleNamespace(linear=F.linear)  # F.linear is what nn.Linear runs: addmm

    class SoftmaxRegression(nn.Linear):
        """nn.Linear(784, 10): its parameters, its initialisation, its state_dict names;
        the forward is this module's `forward` above."""

        def forward(self, x):
            return forward(x, {"weight": self.weight, "bias": self.bias}, ops)

    return SoftmaxRegression


MODELS = {"softmax-regression": _torch_module}  # every model the package has


def make_model(name: str = "softmax-regression"):
    # Built on the CPU from the seeded global RNG, then moved: the same initial weights
    # on every device, as in the tutorial (`nn.Linear(784, 10, bias=True).to(device)`).
    return MODELS[name]()(IN_FEATURES, NUM_CLASSES, bias=True)

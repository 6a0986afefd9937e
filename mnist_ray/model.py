"""The model: softmax regression, one linear layer from 784 pixels to 10 class scores.

from mnist_ray.model import make_model
model = make_model()            # nn.Linear(784, 10), torch's default init
"""

from __future__ import annotations

from torch import nn

from mnist_ray.config import IN_FEATURES, NUM_CLASSES


def make_model() -> nn.Linear:
    # Built on the CPU from the seeded global RNG, then moved: the same initial weights
    # on every device, as in the tutorial (`nn.Linear(784, 10, bias=True).to(device)`).
    return nn.Linear(IN_FEATURES, NUM_CLASSES, bias=True)

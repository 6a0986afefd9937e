"""One model: training and evaluation both follow from model.py's forward."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mnist_ray import model
from mnist_ray.config import WEIGHT_SHAPES, TrainConfig
from mnist_ray.evaluate import evaluate_shard, merge
from mnist_ray.train import train

CPU = torch.device("cpu")


def _weights(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in WEIGHT_SHAPES.items()}


def _torch_logits(name: str, weights: dict, images: np.ndarray) -> np.ndarray:
    module = model.make_model(name)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)
    with torch.no_grad():
        return module(x).double().numpy()


@pytest.mark.parametrize("name", sorted(model.MODELS))
def test_numpy_path_and_module_agree(name, mnist_test):
    """Fails the moment evaluation's numpy forward and the nn.Module disagree."""
    images, _ = mnist_test
    weights = _weights()
    ours, theirs = model.numpy_logits(weights, images), _torch_logits(name, weights, images)
    assert np.allclose(ours, theirs, rtol=0, atol=1e-5)  # float32 against float64
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))


@pytest.mark.parametrize("name", sorted(model.MODELS))
def test_the_module_has_the_shapes_the_store_checks(name):
    state = model.make_model(name).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == WEIGHT_SHAPES


def test_a_changed_forward_reaches_training_and_evaluation(monkeypatch, mnist_train, mnist_test):
    """Give the model another forward: training's costs and evaluation's counts both move,
    and the two paths still agree with each other."""
    images, labels = mnist_test
    before_train = train(TrainConfig(epochs=1), *mnist_train, CPU, log=lambda _: None)
    before_eval = merge([evaluate_shard(before_train.weights, images, labels)])

    def doubled(x, params, ops):  # the same layer on pixels scaled twice as much
        return ops.linear(x * 2, params["weight"], params["bias"])

    monkeypatch.setattr(model, "forward", doubled)
    after_train = train(TrainConfig(epochs=1), *mnist_train, CPU, log=lambda _: None)
    assert after_train.epoch_costs != before_train.epoch_costs
    after_eval = merge([evaluate_shard(before_train.weights, images, labels)])
    assert after_eval["confusion"] != before_eval["confusion"]
    test_numpy_path_and_module_agree("softmax-regression", mnist_test)


def test_evaluation_imports_no_torch():
    """A shard worker runs evaluate.py: importing it must not pull in torch (seconds)."""
    code = "import sys, mnist_ray.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr

"""The models: one registry of the course's labs; training and evaluation both follow
from each module's forward."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mnist_ray import model
from mnist_ray.config import IMAGE_SHAPE, MODEL_DEFAULTS, WEIGHT_SHAPES, ConfigError, TrainConfig
from mnist_ray.evaluate import evaluate_shard, merge
from mnist_ray.train import train

CPU = torch.device("cpu")
PARAMETERS = {  # counted by hand from the labs' layer sizes
    "softmax": 784 * 10 + 10,
    "mlp": (784 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10),
    "mlp-xavier": (784 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10),
    "mlp-deep": (784 * 512 + 512) + 3 * (512 * 512 + 512) + (512 * 10 + 10),
    "mlp-dropout": (784 * 512 + 512) + 3 * (512 * 512 + 512) + (512 * 10 + 10),
    "cnn": (32 * 9 + 32) + (64 * 32 * 9 + 64) + (7 * 7 * 64 * 10 + 10),
    "cnn-deep": (32 * 9 + 32) + (64 * 32 * 9 + 64) + (128 * 64 * 9 + 128)
    + (4 * 4 * 128 * 625 + 625) + (625 * 10 + 10),
}  # fmt: skip


@pytest.mark.parametrize("name", model.list_models())
def test_every_model_scores_images_and_counts_its_parameters(name):
    torch.manual_seed(0)
    module = model.get_model(name).eval()
    with torch.no_grad():
        scores = module(torch.rand(5, *IMAGE_SHAPE))
    assert scores.shape == (5, 10) and scores.dtype == torch.float32
    assert model.parameter_count(name) == PARAMETERS[name]
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert model.weight_shapes(name) == shapes


def test_the_registry_names_each_lab_and_its_training():
    assert model.list_models() == list(MODEL_DEFAULTS)
    for name in model.list_models():
        spec = model.spec(name)
        assert (spec.optimizer, spec.lr) == MODEL_DEFAULTS[name]
        assert spec.lab.startswith("lab-") and spec.lab.endswith(".py")
    assert model.spec("cnn-deep").lab == "lab-11-2-mnist_deep_cnn.py"
    assert (TrainConfig().optimizer, TrainConfig().lr) == ("sgd", 0.1)  # the tutorial's
    assert (TrainConfig(model="cnn").optimizer, TrainConfig(model="cnn").lr) == ("adam", 0.001)
    mine = TrainConfig(model="cnn", optimizer="sgd", lr=0.01)
    assert (mine.optimizer, mine.lr) == ("sgd", 0.01)
    assert TrainConfig(**TrainConfig(model="mlp").to_dict()) == TrainConfig(model="mlp")
    assert TrainConfig(model="mlp", lr=0.1).lr == 0.1  # given, even where it is the default
    assert TrainConfig.lr is None and type(TrainConfig().lr) is float  # None: the lab's


def test_every_configs_dict_names_its_model_and_optimizer():
    """Run rows and sweep trials carry the model and optimizer, the tutorial's too, and
    every dict gives its config back."""
    every = ["dataset", "epochs", "batch_size", "lr", "seed", "model", "optimizer"]
    opt_in = ["model_args", "weight_decay", "momentum", "optimizer_args", "lr_schedule"]
    opt_in += ["lr_step", "lr_gamma", "warmup_epochs", "val_split", "keep", "patience"]
    assert list(TrainConfig().to_dict()) == every + opt_in
    assert TrainConfig(lr=0.5).to_dict() | {"lr": 0.1} == TrainConfig().to_dict()
    assert (TrainConfig().to_dict()["model"], TrainConfig().to_dict()["optimizer"]) == (
        "softmax",
        "sgd",
    )
    cnn = TrainConfig(model="cnn").to_dict()
    assert (cnn["model"], cnn["optimizer"], cnn["lr"]) == ("cnn", "adam", 0.001)
    adam = TrainConfig(optimizer="adam").to_dict()
    assert (adam["model"], adam["optimizer"]) == ("softmax", "adam")
    for cfg in (TrainConfig(), TrainConfig(model="cnn"), TrainConfig(optimizer="adam")):
        assert TrainConfig(**cfg.to_dict()) == cfg


def test_an_unknown_model_or_optimizer_is_refused():
    with pytest.raises(ConfigError, match="model: unknown model 'resnet'; choose one of"):
        TrainConfig(model="resnet").validate()
    with pytest.raises(ConfigError, match="optimizer: unknown optimizer 'adamx'"):
        TrainConfig(optimizer="adamx").validate()
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        model.get_model("resnet")


def test_the_softmax_module_has_the_shapes_the_store_checks():
    assert model.weight_shapes("softmax") == WEIGHT_SHAPES
    assert model.weight_shapes(TrainConfig().model) == WEIGHT_SHAPES  # the default model


def test_loading_weights_draws_nothing_from_the_rng():
    torch.manual_seed(1)
    weights = {k: v.numpy() for k, v in model.get_model("cnn-deep").state_dict().items()}
    before = torch.get_rng_state()
    loaded = model.with_weights("cnn-deep", weights)
    assert torch.equal(torch.get_rng_state(), before)
    assert not loaded.training  # eval mode: no dropout
    for name, value in loaded.state_dict().items():
        assert np.array_equal(value.numpy(), weights[name]), name


def test_a_changed_forward_reaches_training_and_evaluation(monkeypatch, mnist_train, mnist_test):
    """Give the model another forward: training's costs and evaluation's counts both move."""
    images, labels = mnist_test
    before_train = train(TrainConfig(epochs=1), *mnist_train, CPU, log=lambda _: None)
    before_eval = merge([evaluate_shard(before_train.weights, images, labels)])

    forward = model.SoftmaxRegression.forward

    def doubled(self, x):  # the same layer on pixels scaled twice as much
        return forward(self, x * 2)

    monkeypatch.setattr(model.SoftmaxRegression, "forward", doubled)
    after_train = train(TrainConfig(epochs=1), *mnist_train, CPU, log=lambda _: None)
    assert after_train.epoch_costs != before_train.epoch_costs
    after_eval = merge([evaluate_shard(before_train.weights, images, labels)])
    assert after_eval["confusion"] != before_eval["confusion"]


def test_evaluation_imports_no_torch():
    """The driver imports evaluate.py: importing it must not pull in torch (seconds); the
    shard that evaluates imports it on its first call."""
    code = "import sys, mnist_ray.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr

"""The opt-in training options against loops written the classic way with torch's own
classes (optimizers, schedulers, BatchNorm), in the same process, at 1 thread.

    PYTHONPATH=. python -m pytest tests/test_training_options.py -q
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from mnist_ray.checkpoints import latest, save
from mnist_ray.config import ConfigError, TrainConfig
from mnist_ray.model import numpy_state, weight_layout, with_weights
from mnist_ray.optim import OPTIMIZERS, optimizer_class
from mnist_ray.outcome import Diverged
from mnist_ray.store import Store
from mnist_ray.train import Training, train, validation_split

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")
SLICE = 3000  # images: a few of the course's steps, fast on 2 cores


def quiet(_line: str) -> None:
    pass


def classic(images, labels, build, make_optimizer, *, epochs, make_schedule=None, per_batch=False):
    """The courses' loop: seeds, the model, DataLoader(shuffle=True, drop_last=True) over
    ToTensor's pixels, zero_grad/backward/step, the scheduler stepped as torch documents.
    Returns (model, printed costs, the rate at each epoch's first step)."""
    torch.set_num_threads(1)
    random.seed(777)
    torch.manual_seed(777)
    x = torch.from_numpy(np.asarray(images)).float().div(255).view(-1, 1, 28, 28)
    dataset = torch.utils.data.TensorDataset(x, torch.from_numpy(np.asarray(labels)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, shuffle=True, drop_last=True)
    model = build()
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model.parameters())
    schedule = make_schedule(optimizer) if make_schedule else None
    costs, lrs = [], []
    model.train()
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        avg_cost = 0
        for X, Y in loader:
            optimizer.zero_grad()
            cost = criterion(model(X), Y)
            cost.backward()
            optimizer.step()
            if per_batch:
                schedule.step()
            avg_cost += cost / len(loader)
        if schedule is not None and not per_batch:
            schedule.step()
        costs.append(float(f"{avg_cost.item():.9f}"))
    return model, costs, lrs


def ours(images, labels, **settings):
    result = train(TrainConfig(**settings), images, labels, CPU, log=quiet, threads=1)
    return result, [float(f"{c:.9f}") for c in result.epoch_costs]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class Softmax(nn.Linear):  # the tutorial's nn.Linear(784, 10) on a (B, 1, 28, 28) batch
    def __init__(self):
        super().__init__(784, 10)

    def forward(self, x):
        return super().forward(x.flatten(1))


CASES = {
    "adamw wd 0.01, cosine": (
        dict(optimizer="adamw", lr=0.01, weight_decay=0.01, lr_schedule="cosine"),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=2),
        False,
    ),
    "sgd momentum nesterov, step": (
        dict(
            optimizer="sgd", lr=0.1, momentum=0.9, optimizer_args='{"nesterov":true}',
            lr_schedule="step", lr_step=1, lr_gamma=0.5,
        ),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        False,
    ),
    "rmsprop, onecycle": (
        dict(optimizer="rmsprop", lr=0.001, lr_schedule="onecycle"),
        lambda p: torch.optim.RMSprop(p, lr=0.001),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.001, total_steps=2 * 30),
        True,
    ),
    "adam, 1 warm-up epoch then cosine": (
        dict(optimizer="adam", lr=0.01, lr_schedule="cosine", warmup_epochs=1),
        lambda p: torch.optim.Adam(p, lr=0.01),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=1),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=1),
            ],
            milestones=[1],
        ),
        False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_optimizers_and_schedules_are_torchs_own_loop_digit_for_digit(case, mnist_train):
    settings, make_optimizer, make_schedule, per_batch = CASES[case]
    images, labels = mnist_train.images[:SLICE], mnist_train.labels[:SLICE]
    model, costs, lrs = classic(
        images, labels, Softmax, make_optimizer,
        epochs=2, make_schedule=make_schedule, per_batch=per_batch,
    )  # fmt: skip
    result, printed = ours(images, labels, epochs=2, **settings)
    assert printed == costs
    assert result.lrs == lrs
    assert same_weights(result.weights, numpy_state(model.state_dict()))


def test_the_tutorials_run_is_unchanged_by_the_new_options(mnist_train):
    """With no new option: plain SGD steps (no torch.optim), no validation, a constant
    rate recorded per epoch, the same weights as before the options existed."""
    images, labels = mnist_train.images[:SLICE], mnist_train.labels[:SLICE]
    run = Training(TrainConfig(epochs=2), images, labels, CPU, log=quiet, threads=1)
    assert run.optimizer is None and run.schedule is None and run.val_y is None
    list(run)
    result = run.result()
    assert result.lrs == [0.1, 0.1] and result.val_costs is None and result.best_epoch is None
    model, costs, _ = classic(
        images, labels, Softmax, lambda p: torch.optim.SGD(p, lr=0.1), epochs=2
    )
    assert [float(f"{c:.9f}") for c in result.epoch_costs] == costs
    assert same_weights(result.weights, numpy_state(model.state_dict()))


BATCHNORM = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8, dropout=0.25):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(4), nn.Dropout(dropout),
        )
        self.head = nn.Linear(width * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))
"""


def test_a_batchnorm_models_state_is_stored_whole_and_restored_exactly(
    mnist_train, tmp_path, monkeypatch
):
    (tmp_path / "bn.py").write_text(BATCHNORM)
    monkeypatch.chdir(tmp_path)
    spec, args = "bn.py:Net", {"width": 6}
    images, labels = mnist_train.images[:SLICE], mnist_train.labels[:SLICE]
    cfg = dict(model=spec, model_args=json.dumps(args), optimizer="adamw", lr=0.01)
    result, printed = ours(images, labels, epochs=1, **cfg)

    namespace: dict = {}
    exec(BATCHNORM, namespace)
    model, costs, _ = classic(
        images, labels, lambda: namespace["Net"](**args),
        lambda p: torch.optim.AdamW(p, lr=0.01), epochs=1,
    )  # fmt: skip
    assert printed == costs
    state = numpy_state(model.state_dict())  # running statistics and the step count too
    assert same_weights(result.weights, state)
    assert result.weights["body.1.num_batches_tracked"].dtype == np.int64
    assert int(result.weights["body.1.num_batches_tracked"]) == SLICE // 100
    assert result.weights["body.1.weight"].shape == (6,)  # the constructor argument

    store = Store(str(tmp_path / "store"))
    uri, sha = store.write_weights("run-bn", result.weights)
    layout = weight_layout(spec, args)
    shapes = {k: s for k, (s, _) in layout.items()}
    dtypes = {k: d for k, (_, d) in layout.items()}
    read = store.read_weights({"run_id": "run-bn", "weights_sha256": sha}, shapes, dtypes)
    assert same_weights(read, result.weights)
    module = with_weights(spec, read, args)
    assert not module.training  # evaluation: BatchNorm on its running statistics
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(module(x), model.eval()(x))


def test_a_bfloat16_parameter_is_stored_as_its_bits_and_comes_back(tmp_path):
    state = {"w": torch.randn(3, 4).to(torch.bfloat16), "n": torch.tensor(7)}
    arrays = numpy_state(state)
    assert arrays["w"].dtype == np.uint16 and arrays["n"].dtype == np.int64
    store = Store(str(tmp_path))
    _, sha = store.write_weights("run-bf", arrays)
    read = store.read_weights(
        {"run_id": "run-bf", "weights_sha256": sha},
        {"w": (3, 4), "n": ()},
        {"w": "uint16", "n": "int64"},
    )
    from mnist_ray.model import torch_state

    back = torch_state(read, state)
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], state["w"])


def test_a_diverging_run_ends_at_its_first_non_finite_step(mnist_train):
    images, labels = mnist_train.images[:SLICE], mnist_train.labels[:SLICE]
    cfg = TrainConfig(model="mlp", optimizer="sgd", lr=1000.0, epochs=3)
    with pytest.raises(Diverged) as raised:
        train(cfg, images, labels, CPU, log=quiet, threads=1)
    # The classic loop, step by step: where its cost first stops being finite.
    torch.set_num_threads(1)
    random.seed(777)
    torch.manual_seed(777)
    from mnist_ray.model import get_model
    from mnist_ray.train import epoch_permutation

    model = get_model("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=1000.0)
    x = torch.from_numpy(images).float().div(255).view(-1, 1, 28, 28)
    y = torch.from_numpy(labels)
    order = epoch_permutation(SLICE)
    for step in range(SLICE // 100):
        idx = order[step * 100 : (step + 1) * 100]
        optimizer.zero_grad()
        cost = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(cost):
            break
        cost.backward()
        optimizer.step()
    assert (raised.value.epoch, raised.value.step) == (1, step + 1)
    assert str(raised.value) == f"diverged at epoch 1, step {step + 1}: cost {cost.item()}"


def test_validation_split_keep_best_and_patience(mnist_train):
    images, labels = mnist_train.images[:SLICE], mnist_train.labels[:SLICE]
    settings = dict(optimizer="adam", lr=0.05, val_split=0.2, epochs=8, keep="best", patience=2)
    result, _ = ours(images, labels, **settings)
    accuracies = result.val_accuracies
    best = int(np.argmax(accuracies)) + 1  # the first of equals
    assert result.best_epoch == best
    ran = len(result.epoch_costs)
    assert result.stopped_early == (ran < 8)
    if result.stopped_early:
        assert ran - best == 2 and max(accuracies[best:], default=0) <= accuracies[best - 1]
    # The kept weights are the best epoch's: the same run trained for that many epochs.
    short, _ = ours(images, labels, **settings | dict(epochs=best, keep="last", patience=None))
    assert same_weights(result.weights, short.weights)
    # The validation figures are the held-out images' own, in eval mode.
    kept, held = validation_split(SLICE, 0.2, 777)
    assert len(held) == 600 and len(kept) == 2400 and not set(kept) & set(held)
    module = with_weights("softmax", short.weights)
    x = torch.from_numpy(images[held]).float().div(255).view(-1, 1, 28, 28)
    with torch.no_grad():
        scores = module(x)
    y = torch.from_numpy(labels[held])
    assert short.val_accuracies[-1] == (scores.argmax(1) == y).double().mean().item()
    cost = nn.functional.cross_entropy(scores, y, reduction="sum").double().item() / 600
    assert short.val_costs[-1] == pytest.approx(cost, rel=1e-12)


def test_resume_goes_on_with_the_schedule_and_the_best_epoch_bit_identically(mnist_train, tmp_path):
    images, labels = mnist_train.images[:SLICE], mnist_train.labels[:SLICE]
    cfg = TrainConfig(
        optimizer="adamw", lr=0.02, weight_decay=0.01, lr_schedule="cosine", warmup_epochs=1,
        val_split=0.1, keep="best", epochs=4,
    )  # fmt: skip
    whole = train(cfg, images, labels, CPU, log=quiet, threads=1)
    first = Training(cfg, images, labels, CPU, log=quiet, threads=1)
    for epoch in first:
        if epoch.epoch == 2:
            break
    store = Store(str(tmp_path))
    save(store, "run-r", first.checkpoint())
    ckpt = latest(store, "run-r", shapes=None)
    resumed = train(cfg, images, labels, CPU, log=quiet, threads=1, resume=ckpt)
    assert resumed.epoch_costs == whole.epoch_costs and resumed.lrs == whole.lrs
    assert resumed.val_accuracies == whole.val_accuracies
    assert resumed.best_epoch == whole.best_epoch
    assert same_weights(resumed.weights, whole.weights)


def test_every_optimizer_name_is_torchs():
    for name in OPTIMIZERS:
        assert optimizer_class(name).__name__.lower() == name


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(optimizer="adam", momentum=0.9), "momentum: adam takes no momentum; it takes betas"),
        (dict(optimizer="sgd", optimizer_args='{"nestrov":true}'), "sgd takes no nestrov"),
        (dict(keep="best"), "keep: needs a validation split: give --val-split"),
        (dict(patience=2), "patience: needs a validation split"),
        (dict(model_args='{"width":3}'), "built-in model softmax takes no arguments"),
        (dict(lr_step=2), "lr_step: is for --lr-schedule step only"),
        (dict(lr_schedule="cosine", warmup_epochs=15), "warmup_epochs: 15 is not in 0..14"),
        (dict(val_split=0.9), "val_split: 0.9 is not in 0..0.5"),
    ],
)
def test_a_bad_option_is_one_message_naming_it(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings).validate()


BRANCHY = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.dark, self.light = nn.Linear(784, 10), nn.Linear(784, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.dark(x) if x.mean() < 0.25 else self.light(x)  # a trace keeps one
"""


def test_a_users_model_exports_to_onnx_only_when_its_scores_are_torchs(tmp_path, monkeypatch):
    from mnist_ray import artifact
    from mnist_ray.evaluate import logits
    from mnist_ray.model import get_model

    (tmp_path / "bn.py").write_text(BATCHNORM)
    (tmp_path / "branchy.py").write_text(BRANCHY)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    weights = numpy_state(get_model("bn.py:Net", {"width": 4}).state_dict())
    onnx, why = artifact.exported("bn.py:Net", weights, {"width": 4})
    assert onnx is not None and why is None
    images = np.random.default_rng(1).integers(0, 256, (300, 28, 28), np.uint8)
    ours = logits(None, images, onnx=onnx)
    torchs = logits(weights, images, model="bn.py:Net", model_args={"width": 4})
    tolerance = artifact.CHECK_TOLERANCE
    assert np.allclose(ours, torchs, rtol=tolerance, atol=tolerance)

    weights = numpy_state(get_model("branchy.py:Net").state_dict())
    onnx, why = artifact.exported("branchy.py:Net", weights)
    assert onnx is None and "differ from torch's by" in why

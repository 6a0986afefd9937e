"""The course's labs, each beside ours: the lab's own program and our training of the
same built-in model, in this process, with the same thread count, must take the same
steps bit for bit.

The lab's side, in tests/labs.py (bench/bench.py times it too), is written the lab's
way: torchvision's MNIST with ToTensor, a DataLoader(shuffle=True, drop_last=True), the
lab's layers built in its order with its initialisation, its `model.train()`,
CrossEntropyLoss and torch.optim.Adam(lr=0.001), and its loop (`zero_grad`, forward,
loss, `backward`, `step`, `avg_cost += cost / total_batch`).
How much each test runs, and why:

- the MLPs (labs 10-2 to 10-5): one whole epoch (600 steps) on each side, the least
  that gives the cost the lab prints (compared exactly, as float32) and the weights
  after it (bit for bit). A wrong initialisation shows from step 1, a wrong optimizer
  or learning rate from step 2, a dropout mask drawn in another order at once; 600
  steps also go through Adam's whole bias-correction warm-up.
- the CNNs (labs 11-1 and 11-2): the first 50 steps (each step's cost, and the weights
  after step 50, bit for bit). A CNN epoch takes 25-45 s on 2 cores for each side;
  50 steps catch the same mistakes (init at step 1, the optimizer by step 2, 50 dropout
  masks) in a tenth of that.

The softmax model's own loop is compared in tests/test_train.py. A test that took over
about 30 s on a 2-core machine would be marked slow (still run in CI); see the timings
below the initial-weights test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from labs import CPU, LABS, THREADS, run_lab

from mnist_ray.config import TrainConfig
from mnist_ray.model import get_model, list_models
from mnist_ray.train import Training, train

pytestmark = pytest.mark.slow  # the lane: each lab's classic loop run beside ours

CNN_STEPS = 50


@pytest.fixture(autouse=True)
def _threads_restored():
    """Leave torch's thread count as the next test expects it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def assert_same_weights(lab_model: torch.nn.Module, ours: dict[str, np.ndarray]) -> None:
    """Parameter by parameter, in order (the deep CNN lab names its 625-unit layer twice)."""
    theirs = [p.detach() for p in lab_model.parameters()]
    assert [tuple(t.shape) for t in theirs] == [v.shape for v in ours.values()]
    for name, mine, their in zip(ours, ours.values(), theirs, strict=True):
        assert torch.equal(torch.from_numpy(mine), their), name


def test_every_model_has_its_lab_here():
    assert sorted(LABS) == sorted(list_models())


@pytest.mark.parametrize("name", list(LABS))
def test_the_seed_gives_the_labs_initial_weights(name):
    """Layers built in the lab's order, initialised as the lab does: no training needed."""
    torch.manual_seed(777)
    lab_model = LABS[name]()
    torch.manual_seed(777)
    ours = get_model(name)
    assert_same_weights(lab_model, {k: v.numpy() for k, v in ours.state_dict().items()})


# Seconds for both sides, measured on the 2-core machine with other work running: mlp and
# mlp-xavier 8.5, mlp-deep 19, mlp-dropout 22; cnn 7.4 and cnn-deep 10 for 50 steps.
# None is over 30 s, so none is marked slow.


@pytest.mark.parametrize("name", ["mlp", "mlp-xavier", "mlp-deep", "mlp-dropout"])
def test_an_mlp_epoch_is_the_labs_bit_for_bit(name, data_dir, mnist_train):
    """One whole epoch each side: the printed cost and every weight after it."""
    lab_model, avg_cost, _ = run_lab(data_dir, LABS[name], flatten=True)
    ours = train(
        TrainConfig(epochs=1, model=name), *mnist_train, CPU, log=lambda _: None, threads=THREADS
    )
    assert ours.threads == THREADS
    assert ours.epoch_costs[0] == avg_cost.item()  # the float32 average, bit for bit
    assert_same_weights(lab_model, ours.weights)


@pytest.mark.parametrize("name", ["cnn", "cnn-deep"])
def test_a_cnns_first_50_steps_are_the_labs_bit_for_bit(name, data_dir, mnist_train):
    """The first CNN_STEPS steps each side: every step's cost and the weights after."""
    lab_model, _, lab_costs = run_lab(data_dir, LABS[name], flatten=False, steps=CNN_STEPS)
    run = Training(
        TrainConfig(epochs=1, model=name), *mnist_train, CPU, log=lambda _: None, threads=THREADS
    )
    assert run.first_steps(CNN_STEPS) == lab_costs
    assert_same_weights(lab_model, run.result().weights)

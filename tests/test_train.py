"""Training on the real MNIST files: the tutorial's numbers, step for step.

The expected costs are what the classic program printed (tests/reference.py, whose
numbers and provenance docs/reference.md gives); the program itself runs here too, one
epoch of it beside ours.

    PYTHONPATH=. python -m pytest tests/test_train.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import COST_TOLERANCE, TUTORIAL_COSTS, classic_training

from mnist_ray.config import TrainConfig
from mnist_ray.train import Training, epoch_permutation, train

CPU = torch.device("cpu")


def _quiet(_line: str) -> None:
    pass


def test_default_run_reproduces_the_tutorials_printed_costs(tutorial_run):
    printed = [f"{c:.9f}" for c in tutorial_run.epoch_costs]
    assert len(printed) == 15
    assert printed[0] == f"{TUTORIAL_COSTS[0]:.9f}"
    # The steps are the tutorial's exactly (next test, against the classic loop run here);
    # the per-epoch average is a float32 sum of 600 terms, whose last bits follow the
    # host's vector path and thread count: within COST_TOLERANCE of the recorded digits.
    assert np.allclose(tutorial_run.epoch_costs, TUTORIAL_COSTS, rtol=0, atol=COST_TOLERANCE)


def test_steps_are_the_classic_dataloader_loops_bit_for_bit(data_dir, mnist_train):
    """The classic program itself (tests/reference.py), for one epoch, beside ours in the
    same process."""
    linear, classic_costs = classic_training(str(data_dir), epochs=1, log=_quiet)
    ours = train(TrainConfig(epochs=1), *mnist_train, CPU, log=_quiet)
    assert torch.equal(torch.from_numpy(ours.weights["weight"]), linear.weight.detach())
    assert torch.equal(torch.from_numpy(ours.weights["bias"]), linear.bias.detach())
    assert ours.epoch_costs == classic_costs  # the float32 average, bit for bit
    assert f"{ours.epoch_costs[0]:.9f}" == f"{TUTORIAL_COSTS[0]:.9f}"


def test_permutations_are_the_dataloaders():
    from torch.utils.data import DataLoader

    torch.manual_seed(5)
    loader = DataLoader(list(range(1000)), batch_size=100, shuffle=True, drop_last=True)
    theirs = [torch.cat(list(loader)) for _ in range(2)]
    torch.manual_seed(5)
    ours = [epoch_permutation(1000) for _ in range(2)]
    for a, b in zip(theirs, ours, strict=True):
        assert torch.equal(a, b)


def test_resume_from_a_checkpoint_is_bit_identical(mnist_train):
    cfg = TrainConfig(epochs=3)
    saved = []
    whole = train(cfg, *mnist_train, CPU, on_epoch=saved.append, log=_quiet)
    resumed = train(cfg, *mnist_train, CPU, resume=saved[0], log=_quiet)
    assert resumed.epoch_costs == whole.epoch_costs
    for name in ("weight", "bias"):
        assert np.array_equal(resumed.weights[name], whole.weights[name])
    assert [c.epoch for c in saved] == [1, 2, 3]


def test_an_adam_run_resumed_in_the_middle_is_the_uninterrupted_run(mnist_train, tmp_path):
    """Adam's moments and step count, and dropout's RNG, through a stored checkpoint: the
    deep MLP with dropout on the first 3000 images (30 steps an epoch, to keep it short),
    resumed after epoch 1 of 3 from the store, ends where the uninterrupted run ends."""
    from mnist_ray import checkpoints
    from mnist_ray.store import Store

    images, labels = (a[:3000] for a in mnist_train)
    cfg, store = TrainConfig(epochs=3, model="mlp-dropout"), Store(tmp_path)
    saved = []
    whole = train(cfg, images, labels, CPU, on_epoch=saved.append, log=_quiet)
    checkpoints.save(store, "run-adam", saved[0])
    stored = checkpoints.latest(store, "run-adam", shapes=None)
    assert {k.split(".", 1)[1] for k in stored.optimizer} == {"step", "exp_avg", "exp_avg_sq"}
    resumed = train(cfg, images, labels, CPU, resume=stored, log=_quiet)
    assert resumed.epoch_costs == whole.epoch_costs
    for name, value in whole.weights.items():
        assert np.array_equal(resumed.weights[name], value), name
    # Without Adam's state the same resume goes elsewhere: the state is what made it exact.
    stored.optimizer = {}
    forgetful = train(cfg, images, labels, CPU, resume=stored, log=_quiet)
    assert forgetful.epoch_costs[1:] != whole.epoch_costs[1:]


def test_a_checkpoint_of_another_model_is_refused(mnist_train):
    from mnist_ray.checkpoints import Checkpoint

    softmax = {"weight": np.zeros((10, 784), np.float32), "bias": np.zeros(10, np.float32)}
    ckpt = Checkpoint(1, [0.5], softmax, torch.get_rng_state().numpy())
    with pytest.raises(ValueError, match="checkpoint after epoch 1 does not fit this model"):
        Training(TrainConfig(epochs=2, model="mlp"), *mnist_train, CPU, resume=ckpt, log=_quiet)


def test_other_hyperparameters_change_the_run(mnist_train):
    base = train(TrainConfig(epochs=1), *mnist_train, CPU, log=_quiet)
    other = train(
        TrainConfig(epochs=1, seed=1, batch_size=50, lr=0.05), *mnist_train, CPU, log=_quiet
    )
    assert other.epoch_costs[0] != base.epoch_costs[0]


def test_batch_larger_than_the_data_is_refused():
    x = np.zeros((10, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="batch_size 100 is larger than the 10 training images"):
        train(TrainConfig(epochs=1), x, np.zeros(10, np.int64), CPU, log=_quiet)


def test_the_newest_checkpoint_is_chosen_by_epoch_at_any_epoch_count(tmp_path):
    from mnist_ray import checkpoints
    from mnist_ray.store import Store

    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    for epoch in (2, 9999, 10000, 998):
        weights = {"weight": rng.random((10, 784), np.float32), "bias": np.zeros(10, np.float32)}
        ckpt = checkpoints.Checkpoint(epoch, [0.5] * epoch, weights, np.zeros(8, np.uint8))
        checkpoints.save(store, "run-long", ckpt)
    assert checkpoints.latest(store, "run-long").epoch == 10000
    assert checkpoints.latest(store, "run-none") is None


# ---- on a GPU (skipped without CUDA; ../shared/device/gpu-check.sh runs these) ----------------


@pytest.fixture(scope="module")
def cpu_costs(mnist_train):
    return train(TrainConfig(epochs=5), *mnist_train, CPU, log=_quiet).epoch_costs


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [True, False], ids=["cuda-graph", "eager"])
def test_gpu_training_matches_the_cpu(mnist_train, cpu_costs, cuda_graph):
    got = train(
        TrainConfig(epochs=5), *mnist_train, torch.device("cuda", 0), log=_quiet,
        cuda_graph=cuda_graph,
    )  # fmt: skip
    assert got.cuda_graph is cuda_graph
    assert got.device.startswith("cuda:0 (") and torch.cuda.get_device_name(0) in got.device
    assert np.allclose(got.epoch_costs, cpu_costs, rtol=0, atol=1e-6), (got.epoch_costs, cpu_costs)


@pytest.mark.gpu
def test_gpu_graph_and_eager_paths_agree(mnist_train):
    runs = [
        train(TrainConfig(epochs=3), *mnist_train, torch.device("cuda", 0), log=_quiet,
              cuda_graph=graph)
        for graph in (True, False)
    ]  # fmt: skip
    assert np.allclose(runs[0].epoch_costs, runs[1].epoch_costs, rtol=0, atol=1e-6)
    assert np.allclose(runs[0].weights["weight"], runs[1].weights["weight"], rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mlp-dropout", "cnn-deep"])
def test_gpu_graph_and_eager_paths_agree_with_adam_and_dropout(mnist_train, name):
    """Captured (Adam capturable) and eager (Adam as the labs run it) on 6000 images: the
    same dropout masks from the CUDA RNG, so the costs differ only in rounding."""
    images, labels = (a[:6000] for a in mnist_train)
    runs = [
        train(TrainConfig(epochs=2, model=name), images, labels, torch.device("cuda", 0),
              log=_quiet, cuda_graph=graph)
        for graph in (True, False)
    ]  # fmt: skip
    assert runs[0].cuda_graph and not runs[1].cuda_graph
    assert np.allclose(runs[0].epoch_costs, runs[1].epoch_costs, rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_gpu_resume_with_adam_and_dropout_is_bit_identical(mnist_train):
    """The checkpoint holds the CUDA RNG (dropout's masks) and Adam's state on the device."""
    images, labels = (a[:3000] for a in mnist_train)
    cfg, gpu, saved = TrainConfig(epochs=3, model="mlp-dropout"), torch.device("cuda", 0), []
    whole = train(cfg, images, labels, gpu, on_epoch=saved.append, log=_quiet)
    resumed = train(cfg, images, labels, gpu, resume=saved[0], log=_quiet)
    assert whole.cuda_graph and resumed.cuda_graph
    assert resumed.epoch_costs == whole.epoch_costs


@pytest.mark.gpu
def test_gpu_run_row_names_the_gpu_and_the_graph(ray_local, mnist_train, tmp_path):
    """Through Ray, as `submit train --gpus 1` runs it: the row says which GPU and how."""
    from mnist_ray.runs import train_and_store
    from mnist_ray.store import Store

    row = train_and_store(
        TrainConfig(epochs=2), *mnist_train, Store(tmp_path), None, gpus="1", log=_quiet
    )
    assert row["device"].startswith("cuda:0 (") and row["cuda_graph"] is True
    assert row["gpu_ids"] == [0] and row["gpu_peak_mib"] > 0
    assert not (tmp_path / "checkpoints").exists()  # no storage traffic during its epochs

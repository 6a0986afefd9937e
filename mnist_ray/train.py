"""Training: the classic softmax-regression loop, plain torch, no Ray.

    import torch
    from mnist_ray.config import TrainConfig
    from mnist_ray.data import load
    from mnist_ray.train import Training, train
    images, labels = load("mnist", "train")
    result = train(TrainConfig(), images, labels, torch.device("cpu"))
    result.epoch_costs[-1]          # 0.274422765..., the tutorial's last printed cost

    run = Training(TrainConfig(), images, labels, torch.device("cpu"))
    for epoch in run:               # one Epoch(epoch, cost, seconds) as each completes
        ckpt = run.checkpoint()     # the state to resume from, copied to the host on demand
    run.result()

With the tutorial's defaults this takes the tutorial's exact steps: the same initial
weights, the same shuffled batches, the same SGD updates (tests/test_train.py runs the
classic DataLoader loop beside it and compares the weights bit for bit). It is fast
because the whole training set sits on the device as it was read (uint8, 47 MB) and
each batch is gathered from it by the epoch's permutation and scaled by ToTensor's
`float(pixel) / 255` in one operation: no DataLoader, no per-image transform, and no
float copy of the set (188 MB) to make first. The batch costs stay on the device and
are averaged once an epoch, in the tutorial's order and precision. The step is the familiar one (forward through the model, loss, gradients, SGD update)
written with `torch.autograd.grad` and `add_`, which computes what `zero_grad`,
`backward` and `optimizer.step()` compute without torch.optim, whose first call
imports torch._dynamo (3 s on a small CPU). On a GPU each epoch's steps are captured
once as a CUDA graph and replayed, which removes the per-step launch overhead that
dominates so small a model.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mnist_ray.checkpoints import Checkpoint
from mnist_ray.config import TrainConfig, first_line
from mnist_ray.model import make_model


@dataclass
class TrainResult:
    weights: dict[str, np.ndarray]  # "weight" (10, 784) and "bias" (10,), float32 on the CPU
    epoch_costs: list[float]  # the average cost of each epoch, as the tutorial prints it
    seconds: float  # the training loop alone, data on the device to weights back
    device: str  # e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"
    cuda_graph: bool = False  # whether the epochs ran as a replayed CUDA graph


@dataclass(frozen=True)
class Epoch:
    epoch: int  # 1-based, as the tutorial prints it
    cost: float  # the epoch's average cost
    seconds: float  # since training started (this attempt), for progress


def pick_device(use_gpu: bool = True) -> torch.device:
    """cuda:0 when one is visible and wanted, else the CPU; decided once, then passed in."""
    return torch.device("cuda", 0) if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def epoch_permutation(n: int) -> torch.Tensor:
    """This epoch's shuffle, drawn from the global torch RNG the way DataLoader(shuffle=True)
    draws it: one int64 for the iterator's base seed, one to seed a fresh generator,
    then randperm on the CPU with that generator."""
    torch.empty((), dtype=torch.int64).random_()  # _BaseDataLoaderIter._base_seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())  # RandomSampler
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator)


def sgd_step(params: list[torch.Tensor], loss: torch.Tensor, lr: float) -> None:
    """One step of plain SGD on `params` for `loss`.

    The same arithmetic, bit for bit, as the tutorial's `optimizer.zero_grad();
    cost.backward(); optimizer.step()` with torch.optim.SGD (no momentum, no weight
    decay: `param.add_(grad, alpha=-lr)`)."""
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            param.add_(grad, alpha=-lr)


def average_cost(costs: torch.Tensor, steps: int) -> float:
    """The tutorial's `avg_cost += cost / total_batch` over an epoch's batch costs, in
    float32 and in batch order (numpy's accumulate adds strictly left to right), so the
    printed cost is the tutorial's to the last digit."""
    return float(np.add.accumulate((costs / steps).cpu().numpy())[-1])


class Training:
    """One training run: iterate it for its epochs; `checkpoint()` and `result()` read it."""

    def __init__(
        self,
        cfg: TrainConfig,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        device: torch.device,
        *,
        resume: Checkpoint | None = None,
        log: Callable[[str], None] | None = None,
        cuda_graph: bool = True,  # on a GPU: replay each epoch as one captured graph
    ):
        self.cfg = cfg.validate()
        self.device = device
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        random.seed(cfg.seed)  # the tutorial seeds both before anything else
        torch.manual_seed(cfg.seed)
        self.model = make_model()  # initial weights from the seeded CPU RNG, on every device
        self.criterion = nn.CrossEntropyLoss()
        self.started = time.perf_counter()
        self.model.to(device)
        n = len(images)
        self.x = _tensor(images).to(device).reshape(n, -1)  # uint8: scaled per batch
        self.y = _tensor(labels).to(device, torch.int64)
        self.steps = n // cfg.batch_size  # drop_last: the tutorial's total_batch
        if self.steps == 0:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training images")
        self.epoch_costs: list[float] = []
        if resume is not None:
            _load_checkpoint(self.model, resume)
            self.epoch_costs = list(resume.epoch_costs)
        self.perm = torch.empty(n, dtype=torch.int64, device=device)
        self.params = list(self.model.parameters())
        self.costs = torch.zeros(0, device=device)
        self.replay = None
        if device.type == "cuda" and cuda_graph and len(self.epoch_costs) < cfg.epochs:
            self.replay = self._capture()

    def _epoch(self, count: int | None = None) -> None:
        """The tutorial's inner loop over this epoch's permutation (`self.perm`); the
        batch costs land in `self.costs`."""
        b, steps = self.cfg.batch_size, self.steps if count is None else count
        order = self.perm[: steps * b]
        batches = order.view(steps, b)
        targets = self.y.index_select(0, order).view(steps, b)
        costs = []
        for idx, y in zip(batches, targets, strict=True):
            x = self.x.index_select(0, idx) / 255  # ToTensor's float(pixel) / 255
            cost = self.criterion(self.model(x), y)
            sgd_step(self.params, cost, self.cfg.lr)
            costs.append(cost.detach())
        self.costs = torch.stack(costs)

    def __iter__(self) -> Iterator[Epoch]:
        for epoch in range(len(self.epoch_costs), self.cfg.epochs):
            self.perm.copy_(epoch_permutation(len(self.perm)))  # drawn on the CPU, as DataLoader
            if self.replay is not None:
                self.replay()
            else:
                self._epoch()
            self.epoch_costs.append(average_cost(self.costs, self.steps))
            self.log(f"Epoch: {epoch + 1:04d} cost = {self.epoch_costs[-1]:.9f}")
            yield Epoch(epoch + 1, self.epoch_costs[-1], time.perf_counter() - self.started)

    def checkpoint(self) -> Checkpoint:
        """The state after the epochs so far: enough to resume bit-identically."""
        return Checkpoint(
            epoch=len(self.epoch_costs),
            epoch_costs=list(self.epoch_costs),
            weights=_weights(self.model),
            rng_state=torch.get_rng_state().numpy().copy(),
        )

    def result(self) -> TrainResult:
        return TrainResult(
            weights=_weights(self.model),
            epoch_costs=list(self.epoch_costs),
            seconds=time.perf_counter() - self.started,
            device=describe(self.device),
            cuda_graph=self.replay is not None,
        )

    def _capture(self) -> Callable[[], None] | None:
        """Capture one whole epoch as a CUDA graph; None (eager fallback) if capture fails."""
        saved = [p.detach().clone() for p in self.model.parameters()]
        try:
            # Warm up on a side stream (cuBLAS handles, the caching allocator, autograd's
            # buffers), as the CUDA-graph recipe asks, then put the parameters back.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.perm.copy_(torch.arange(len(self.perm)))
                self._epoch(3)
            torch.cuda.current_stream().wait_stream(side)
            _restore(self.model, saved)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._epoch()
            return graph.replay
        except RuntimeError as exc:  # a driver or capture limitation: train eagerly instead
            _restore(self.model, saved)
            self.log(f"CUDA graph capture failed ({first_line(exc)}); training eagerly")
            return None


def train(
    cfg: TrainConfig,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    device: torch.device,
    *,
    resume: Checkpoint | None = None,
    on_epoch: Callable[[Checkpoint], None] | None = None,
    log: Callable[[str], None] | None = None,
    cuda_graph: bool = True,
) -> TrainResult:
    """Train `cfg.epochs` epochs from the seed, or on from `resume`; `on_epoch` gets a
    checkpoint after each epoch (a copy to the host: leave it out when not needed)."""
    run = Training(cfg, images, labels, device, resume=resume, log=log, cuda_graph=cuda_graph)
    for _ in run:
        if on_epoch is not None:
            on_epoch(run.checkpoint())
    return run.result()


def _tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor over the array's memory, without a copy. Arrays from Ray's object store are
    read-only views of shared memory; torch warns about those because it can't stop a
    write, but training only reads them: each batch is gathered into a new tensor."""
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(array)


def _restore(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(model.parameters(), saved, strict=True):
            param.copy_(value)


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _load_checkpoint(model: nn.Module, ckpt: Checkpoint) -> None:
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(torch.from_numpy(np.asarray(ckpt.weights[name])))
    torch.set_rng_state(torch.from_numpy(np.asarray(ckpt.rng_state, dtype=np.uint8).copy()))

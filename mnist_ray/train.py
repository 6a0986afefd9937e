"""Training: the classic softmax-regression loop, plain torch, no Ray.

    import torch
    from mnist_ray.config import TrainConfig
    from mnist_ray.data import load
    from mnist_ray.train import train
    images, labels = load("mnist", "train")
    result = train(TrainConfig(), images, labels, torch.device("cpu"))
    result.epoch_costs[-1]          # 0.274422765..., the tutorial's last printed cost

With the tutorial's defaults this takes the tutorial's exact steps: the same initial
weights, the same shuffled batches, the same SGD updates (tests/test_train.py runs the
classic DataLoader loop beside it and compares the weights bit for bit). It is fast
because the whole training set sits on the device as one float tensor and each batch
is sliced from it by the epoch's permutation; there is no DataLoader and no per-image
transform. Each step calls the very kernels autograd and SGD would call, in the same
order, but directly (see `_step`): no graph to record, no optimizer bookkeeping. On a
GPU each epoch's 600 steps are captured once as a CUDA graph and replayed, which
removes the per-step launch overhead that dominates so small a model.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mnist_ray.checkpoints import Checkpoint
from mnist_ray.config import TrainConfig, first_line
from mnist_ray.model import make_model

aten = torch.ops.aten  # the kernels `_step` calls by name


@dataclass
class TrainResult:
    weights: dict[str, np.ndarray]  # "weight" (10, 784) and "bias" (10,), float32 on the CPU
    epoch_costs: list[float]  # the average cost of each epoch, as the tutorial prints it
    seconds: float  # the training loop alone, data on the device to weights back
    device: str  # e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"
    cuda_graph: bool = False  # whether the epochs ran as a replayed CUDA graph


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
    """Train `cfg.epochs` epochs from the seed, or on from `resume`; call `on_epoch` after each."""
    cfg.validate()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    random.seed(cfg.seed)  # the tutorial seeds both before anything else
    torch.manual_seed(cfg.seed)
    model = make_model()  # initial weights from the seeded CPU RNG, on every device alike
    started = time.perf_counter()
    model.to(device)
    n = len(images)
    x = _tensor(images).to(device).reshape(n, -1).float().div_(255)  # ToTensor's scaling
    y = _tensor(labels).to(device, torch.int64)
    weight, bias = model.weight.detach(), model.bias.detach()  # updated in place
    steps = n // cfg.batch_size  # drop_last: the tutorial's total_batch
    if steps == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {n} training images")

    costs: list[float] = []
    first = 0
    if resume is not None:
        _load_checkpoint(model, resume)
        costs, first = list(resume.epoch_costs), resume.epoch

    def run_epoch(perm: torch.Tensor, total: torch.Tensor, count: int = steps) -> None:
        total.zero_()
        with torch.no_grad():
            for i in range(count):
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                cost = _step(weight, bias, x.index_select(0, idx), y.index_select(0, idx), cfg.lr)
                total += cost / steps  # the tutorial's avg_cost

    perm = torch.empty(n, dtype=torch.int64, device=device)
    total = torch.zeros((), device=device)
    replay = None
    if device.type == "cuda" and cuda_graph and first < cfg.epochs:
        replay = _capture(model, run_epoch, perm, total, log)

    for epoch in range(first, cfg.epochs):
        perm.copy_(epoch_permutation(n))  # drawn on the CPU, as DataLoader does
        if replay is not None:
            replay()
        else:
            run_epoch(perm, total)
        costs.append(total.item())
        log(f"Epoch: {epoch + 1:04d} cost = {costs[-1]:.9f}")
        if on_epoch is not None:
            on_epoch(
                Checkpoint(
                    epoch=epoch + 1,
                    epoch_costs=list(costs),
                    weights=_weights(model),
                    rng_state=torch.get_rng_state().numpy().copy(),
                )
            )
    weights = _weights(model)
    return TrainResult(
        weights=weights,
        epoch_costs=costs,
        seconds=time.perf_counter() - started,
        device=describe(device),
        cuda_graph=replay is not None,
    )


def _step(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float
) -> torch.Tensor:
    """One SGD step of the tutorial's model, loss and optimizer; returns the batch's cost.

    Bit for bit what `optimizer.zero_grad(); cost = criterion(model(x), y);
    cost.backward(); optimizer.step()` computes with nn.Linear, CrossEntropyLoss and
    plain SGD: the same ATen kernels in the same order, the backward ones being those
    autograd's nodes call (NllLossBackward, LogSoftmaxBackward, AddmmBackward's
    grad.t().mm(x) for a column-major weight.t(), the bias gradient summed over the
    batch, SGD's param.add_(grad, alpha=-lr)). Called directly, the step skips
    recording a graph, the optimizer's hooks and bookkeeping, and the torch._dynamo
    import that torch.optim's first call makes (3 s on a small CPU): about twice as fast
    on the CPU, and trivially capturable in a CUDA graph.
    """
    logits = torch.addmm(bias, x, weight.t())  # nn.Linear on a 2-d input
    log_p = torch.log_softmax(logits, 1)  # CrossEntropyLoss = log_softmax + nll_loss (mean)
    cost, total_weight = aten.nll_loss_forward(log_p, y, None, 1, -100)
    grad = aten.nll_loss_backward(torch.ones_like(cost), log_p, y, None, 1, -100, total_weight)
    grad = aten._log_softmax_backward_data(grad, log_p, 1, log_p.dtype)
    weight.add_(grad.t().mm(x), alpha=-lr)
    bias.add_(grad.sum(0), alpha=-lr)
    return cost


def _capture(model, run_epoch, perm, total, log) -> Callable[[], None] | None:
    """Capture one whole epoch as a CUDA graph; None (eager fallback) if capture fails."""
    saved = [p.detach().clone() for p in model.parameters()]
    try:
        # Warm up on a side stream (cuBLAS handles, the caching allocator), as the
        # CUDA-graph recipe asks, then put the parameters back exactly as they were.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            perm.copy_(torch.arange(len(perm)))
            run_epoch(perm, total, 3)
        torch.cuda.current_stream().wait_stream(side)
        _restore(model, saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_epoch(perm, total)
        return graph.replay
    except RuntimeError as exc:  # a driver or capture limitation: train eagerly instead
        _restore(model, saved)
        log(f"CUDA graph capture failed ({first_line(exc)}); training eagerly")
        return None


def _tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor over the array's memory, without a copy. Arrays from Ray's object store are
    read-only views of shared memory; torch warns about those because it can't stop a
    write, but training only reads them (the float copy it trains from is its own)."""
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

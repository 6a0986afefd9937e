"""Training: the course's loops (the classic softmax regression and the labs after it),
plain torch, no Ray.

    import torch
    from mnist_ray.config import TrainConfig
    from mnist_ray.data import load
    from mnist_ray.train import Training, train
    images, labels = load("mnist", "train")
    result = train(TrainConfig(), images, labels, torch.device("cpu"), threads=2)
    result.epoch_costs[-1]          # 0.274422765..., the tutorial's last printed cost
    train(TrainConfig(model="cnn"), images, labels, torch.device("cpu"), threads=2)

    run = Training(TrainConfig(), images, labels, torch.device("cpu"))
    for epoch in run:               # one Epoch(epoch, cost, seconds) as each completes
        ckpt = run.checkpoint()     # the state to resume from, copied to the host on demand
    run.result()

With the defaults, each model takes its program's exact steps: the same initial
weights (the model built right after the seed, as the program builds it), the same
shuffled batches, the same dropout masks (the model in train mode, the global RNG drawn
in the program's order: each epoch's shuffle, then the batches' forwards), the same
optimizer arithmetic (tests/test_train.py and tests/test_labs.py run the programs' own
DataLoader loops beside it and compare the weights bit for bit). The thread count is
set by the caller and recorded: float32 sums, and so the costs, depend on it.

It is fast because the whole training set sits on the device as it was read (uint8, 47
MB) and each batch is gathered from it by the epoch's permutation and scaled by
ToTensor's `float(pixel) / 255` in one operation: no DataLoader, no per-image transform,
and no float copy of the set (188 MB) to make first. The batch costs stay on the device
and are averaged once an epoch, in the program's order and precision. The step is the
familiar one (forward, loss, gradients, update). Plain SGD is written with
`torch.autograd.grad` and `add_`, which computes what `zero_grad`, `backward` and
`optimizer.step()` compute, without torch.optim, whose first call imports torch._dynamo
(3 s on a small CPU); Adam is torch.optim.Adam itself. On a GPU each epoch's steps are
captured once as a CUDA graph and replayed (Adam with `capturable=True`), which removes
the per-step launch overhead that dominates models this small.
"""

from __future__ import annotations

import dataclasses
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
from mnist_ray.config import IMAGE_SHAPE, TrainConfig, first_line
from mnist_ray.model import get_model, numpy_state, torch_state
from mnist_ray.outcome import Diverged, epoch_line


@dataclass
class TrainResult:
    weights: dict[str, np.ndarray]  # the model's state_dict, float32 on the CPU
    epoch_costs: list[float]  # the average cost of each epoch, as the tutorial prints it
    seconds: float  # the training loop alone, data on the device to weights back
    device: str  # e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"
    cuda_graph: bool = False  # whether the epochs ran as a replayed CUDA graph
    threads: int = 1  # torch's intra-op threads: the CPU costs depend on it
    lrs: list[float] | None = None  # each epoch's learning rate (at its first step)
    val_costs: list[float] | None = None  # with a validation split: each epoch's
    val_accuracies: list[float] | None = None
    best_epoch: int | None = None  # with a validation split: the best by its accuracy
    stopped_early: bool | None = None  # with --patience: whether it ended the run


@dataclass(frozen=True)
class Epoch:
    epoch: int  # 1-based, as the tutorial prints it
    cost: float  # the epoch's average cost
    seconds: float  # since training started (this attempt), for progress
    lr: float | None = None  # the epoch's learning rate, when a schedule moves it
    val_cost: float | None = None  # with a validation split
    val_accuracy: float | None = None


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


def average_cost(costs: torch.Tensor, steps: int, epoch: int = 1) -> float:
    """The tutorial's `avg_cost += cost / total_batch` over an epoch's batch costs, in
    float32 and in batch order (numpy's accumulate adds strictly left to right), so the
    printed cost is the tutorial's to the last digit. A batch whose cost is not finite
    raises Diverged, naming the first such step (counted from 1)."""
    each = costs.cpu().numpy()
    if not np.isfinite(each).all():
        step = int(np.argmin(np.isfinite(each)))
        raise Diverged(epoch=epoch, step=step + 1, cost=float(each[step]))
    return float(np.add.accumulate((costs / steps).cpu().numpy())[-1])


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training positions, validation positions) of a set of `n`: the validation images
    are the first round(fraction * n) of `torch.randperm(n)` drawn from a generator seeded
    with the run's seed (the global RNG is not touched), the training images the others,
    in the file's order. Both sorted."""
    held = round(fraction * n)
    generator = torch.Generator()
    generator.manual_seed(seed)
    order = torch.randperm(n, generator=generator).numpy()
    return np.sort(order[held:]), np.sort(order[:held])


Model = nn.Module | Callable[[], nn.Module]  # a module, or a class or builder that makes one


def build_model(model: Model | None, name: str, args: dict | None = None) -> nn.Module:
    """The module to train: the registry's `name` by default (a user's model made with
    `args`); a class or builder is called (after the seed is set, so its initial weights
    follow from the seed), a module is trained from the weights it holds."""
    if model is None:
        return get_model(name, args)
    return model if isinstance(model, nn.Module) else model()


def make_optimizer(
    cfg: TrainConfig, params: list[torch.Tensor], capturable: bool = False
) -> torch.optim.Optimizer | None:
    """The course's by default: torch.optim.Adam as the labs make it (`Adam(model.
    parameters(), lr=learning_rate)`), or None for plain SGD, which `sgd_step` does.
    Otherwise (another optimizer, an argument, a schedule) the torch.optim class as anyone
    makes it: `AdamW(params, lr=lr, weight_decay=0.01)`. `capturable` keeps the step
    count on the device, which a CUDA graph needs to replay the step."""
    if cfg.tutorial_steps and cfg.optimizer == "sgd":
        return None
    if cfg.tutorial_steps:
        return torch.optim.Adam(params, lr=cfg.lr, capturable=capturable)
    from mnist_ray.optim import optimizer_class

    return optimizer_class(cfg.optimizer)(params, lr=cfg.lr, **cfg.optimizer_kwargs())


def make_schedule(cfg: TrainConfig, optimizer, steps: int):
    """(scheduler, per_batch) for --lr-schedule and --warmup-epochs: torch's own classes,
    stepped after each epoch (after each batch when per_batch), or (None, False).

    cosine: CosineAnnealingLR(T_max = epochs - warmup); step: StepLR(step_size = --lr-step,
    gamma = --lr-gamma); onecycle: OneCycleLR(max_lr = --lr, total_steps = epochs * steps,
    pct_start = warmup / epochs when a warm-up is given, else torch's 0.3). A warm-up
    before cosine, step or constant is LinearLR(start_factor=0.1, total_iters=warmup),
    joined to the schedule by SequentialLR(milestones=[warmup])."""
    from torch.optim import lr_scheduler as s

    name, warmup = cfg.lr_schedule, cfg.warmup_epochs
    if name == "onecycle":
        pct = warmup / cfg.epochs if warmup else 0.3
        total = cfg.epochs * steps
        return s.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct), True
    main = None
    if name == "cosine":
        main = s.CosineAnnealingLR(optimizer, T_max=cfg.epochs - warmup)
    elif name == "step":
        main = s.StepLR(optimizer, step_size=cfg.lr_step or 1, gamma=cfg.lr_gamma or 0.1)
    if not warmup:
        return main, False
    ramp = s.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    if main is None:
        return ramp, False
    return s.SequentialLR(optimizer, [ramp, main], milestones=[warmup]), False


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
        model: Model | None = None,  # None: the registry's cfg.model
        threads: int | None = None,  # torch.set_num_threads(threads) first; None: as set
    ):
        self.cfg = cfg.validate()
        self.device = device
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        if threads is not None:
            torch.set_num_threads(threads)
        random.seed(cfg.seed)  # the tutorial seeds both before anything else
        torch.manual_seed(cfg.seed)
        # Built on the CPU from the seeded global RNG, then moved: the same initial weights
        # on every device, as in the labs (`model = ...(...).to(device)`).
        self.model = build_model(model, cfg.model, cfg.model_kwargs())
        self.criterion = nn.CrossEntropyLoss()
        self.started = time.perf_counter()
        self.model.to(device).train()  # train mode: dropout draws its masks, as in the labs
        self.val_x = self.val_y = None
        if cfg.val_split:
            kept, held = validation_split(len(images), cfg.val_split, cfg.seed)
            self.val_x = _tensor(np.asarray(images)[held]).to(device).reshape(len(held), -1)
            self.val_y = _tensor(np.asarray(labels)[held]).to(device, torch.int64)
            images, labels = np.asarray(images)[kept], np.asarray(labels)[kept]
        n = len(images)
        self.x = _tensor(images).to(device).reshape(n, -1)  # uint8: scaled per batch
        self.y = _tensor(labels).to(device, torch.int64)
        self.steps = n // cfg.batch_size  # drop_last: the tutorial's total_batch
        if self.steps == 0:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training images")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # A CUDA graph replays the course's steps; another optimizer or a moving rate trains
        # eagerly (the rate is a Python float the graph would freeze).
        graphed = device.type == "cuda" and cuda_graph and cfg.tutorial_steps
        self.optimizer = make_optimizer(cfg, self.params, capturable=graphed)
        self.epoch_costs: list[float] = []
        self.lrs: list[float] = []
        self.val_costs: list[float] = []
        self.val_accuracies: list[float] = []
        self.best: tuple[int, float, dict[str, torch.Tensor] | None] | None = None
        self.stopped_early = False
        if resume is not None:
            _load_checkpoint(self.model, self.optimizer, resume, device)
            self.epoch_costs = list(resume.epoch_costs)
            self.val_costs = list(resume.val_costs)
            self.val_accuracies = list(resume.val_accuracies)
            self.best = _best_from(resume, self.model, device)
        # After the checkpoint's optimizer state: a scheduler records the rate it starts at.
        self.schedule, self.per_batch = make_schedule(cfg, self.optimizer, self.steps)
        self._replay_schedule(len(self.epoch_costs))
        self.perm = torch.empty(n, dtype=torch.int64, device=device)
        self.costs = torch.zeros(0, device=device)
        self.replay = None
        if graphed and len(self.epoch_costs) < cfg.epochs:
            self.replay = self._capture()

    def _step(self, cost: torch.Tensor) -> None:
        if self.optimizer is None:
            sgd_step(self.params, cost, self.cfg.lr)
        else:
            self.optimizer.zero_grad()
            cost.backward()
            self.optimizer.step()
            if self.per_batch:
                self.schedule.step()

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else self.cfg.lr

    def _replay_schedule(self, epochs: int) -> None:
        """The rates of the epochs a checkpoint restored: the schedule stepped as training
        stepped it (a float recurrence: replayed, it gives the very same rates)."""
        for _ in range(epochs):
            self.lrs.append(self._lr())
            if self.schedule is not None:
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(self.steps if self.per_batch else 1):
                        self.schedule.step()

    def _validate(self) -> tuple[float, float]:
        """(mean cost, accuracy) on the held-out images, the model in eval mode (dropout
        off, BatchNorm on its running statistics), then back in train mode."""
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for a in range(0, len(self.val_y), 1000):
                x = (self.val_x[a : a + 1000] / 255).view(-1, *IMAGE_SHAPE)
                y = self.val_y[a : a + 1000]
                scores = self.model(x)
                total += nn.functional.cross_entropy(scores, y, reduction="sum").double()
                correct += (scores.argmax(dim=1) == y).sum()
        self.model.train()
        n = len(self.val_y)
        return float(total) / n, int(correct) / n

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
            cost = self.criterion(self.model(x.view(-1, *IMAGE_SHAPE)), y)
            self._step(cost)
            costs.append(cost.detach())
        self.costs = torch.stack(costs)

    def _shuffle(self) -> None:
        self.perm.copy_(epoch_permutation(len(self.perm)))  # drawn on the CPU, as DataLoader

    def first_steps(self, count: int) -> list[float]:
        """The next epoch's shuffle and its first `count` steps, eagerly, then stop: where
        a comparison with a program's own loop ends (an epoch of a CNN takes a while).
        Returns each step's cost; the epoch is not counted."""
        self._shuffle()
        self._epoch(count)
        return self.costs.tolist()

    def __iter__(self) -> Iterator[Epoch]:
        for epoch in range(len(self.epoch_costs), self.cfg.epochs):
            lr = self._lr()
            self._shuffle()
            if self.replay is not None:
                self.replay()
            else:
                self._epoch()
            cost = average_cost(self.costs, self.steps, epoch + 1)  # Diverged if not finite
            self.epoch_costs.append(cost)
            self.lrs.append(lr)
            if self.schedule is not None and not self.per_batch:
                self.schedule.step()
            moving = self.cfg.lr_schedule != "constant" or self.cfg.warmup_epochs
            shown = Epoch(epoch + 1, cost, 0.0, lr=lr if moving else None)
            if self.val_y is not None:
                val_cost, val_accuracy = self._validate()
                self.val_costs.append(val_cost)
                self.val_accuracies.append(val_accuracy)
                self._keep_best(epoch + 1, val_accuracy)
                shown = dataclasses.replace(shown, val_cost=val_cost, val_accuracy=val_accuracy)
            self.log(epoch_line(shown))
            yield dataclasses.replace(shown, seconds=time.perf_counter() - self.started)
            patience = self.cfg.patience
            if patience is not None and epoch + 1 - self.best[0] >= patience:
                if epoch + 1 < self.cfg.epochs:
                    self.stopped_early = True
                    self.log(
                        f"Stopped early after epoch {epoch + 1}: validation accuracy has not "
                        f"improved for {patience} epoch(s) (best: epoch {self.best[0]})"
                    )
                return

    def _keep_best(self, epoch: int, accuracy: float) -> None:
        """The best epoch so far by validation accuracy (the first of equals), and with
        --keep best its weights, copied on the device."""
        if self.best is None or accuracy > self.best[1]:
            state = None
            if self.cfg.keep == "best":
                state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = (epoch, accuracy, state)

    def checkpoint(self) -> Checkpoint:
        """The state after the epochs so far: enough to resume bit-identically."""
        best_epoch, _, best_state = self.best or (None, None, None)
        return Checkpoint(
            epoch=len(self.epoch_costs),
            epoch_costs=list(self.epoch_costs),
            val_costs=list(self.val_costs),
            val_accuracies=list(self.val_accuracies),
            best_epoch=best_epoch,
            best_weights=numpy_state(best_state) if best_state is not None else {},
            weights=_weights(self.model),
            rng_state=torch.get_rng_state().numpy().copy(),
            optimizer=_optimizer_state(self.optimizer),
            cuda_rng_state=(
                torch.cuda.get_rng_state(self.device).numpy().copy()
                if self.device.type == "cuda"
                else None
            ),
        )

    def result(self) -> TrainResult:
        validated = self.val_y is not None
        best_epoch, _, best_state = self.best or (None, None, None)
        weights = _weights(self.model)
        if self.cfg.keep == "best" and best_state is not None:
            weights = numpy_state(best_state)
        return TrainResult(
            weights=weights,
            epoch_costs=list(self.epoch_costs),
            seconds=time.perf_counter() - self.started,
            device=describe(self.device),
            cuda_graph=self.replay is not None,
            threads=torch.get_num_threads(),
            lrs=list(self.lrs),
            val_costs=list(self.val_costs) if validated else None,
            val_accuracies=list(self.val_accuracies) if validated else None,
            best_epoch=best_epoch if validated else None,
            stopped_early=self.stopped_early if self.cfg.patience is not None else None,
        )

    def _capture(self) -> Callable[[], None] | None:
        """Capture one whole epoch as a CUDA graph; None (eager fallback) if capture fails."""
        rewind = _Rewind(self.params, self.optimizer, self.device)
        try:
            # Warm up on a side stream (cuBLAS handles, the caching allocator, autograd's
            # buffers, Adam's state), as the CUDA-graph recipe asks, then put the
            # parameters, the optimizer's state and the CUDA RNG (dropout) back.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.perm.copy_(torch.arange(len(self.perm)))
                self._epoch(min(3, self.steps))
            torch.cuda.current_stream().wait_stream(side)
            rewind()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._epoch()
            return graph.replay
        except RuntimeError as exc:  # a driver or capture limitation: train eagerly instead
            rewind()
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
    model: Model | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train `cfg.epochs` epochs from the seed, or on from `resume`; `on_epoch` gets a
    checkpoint after each epoch (a copy to the host: leave it out when not needed)."""
    run = Training(
        cfg, images, labels, device,
        resume=resume, log=log, cuda_graph=cuda_graph, model=model, threads=threads,
    )  # fmt: skip
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


class _Rewind:
    """Puts back, when called, what a CUDA graph's warm-up steps changed: the parameters,
    the optimizer's state (created by the warm-up if it had none: then zeroed, which is
    what a fresh state holds) and the CUDA RNG that dropout draws from. In place: the
    graph captured next must use these very tensors."""

    def __init__(self, params: list[torch.Tensor], optimizer, device: torch.device):
        self.params = params
        self.saved = [p.detach().clone() for p in params]
        self.optimizer = optimizer
        self.state = _state_tensors(optimizer, clone=True)
        self.rng = torch.cuda.get_rng_state(device)
        self.device = device

    def __call__(self) -> None:
        with torch.no_grad():
            for param, value in zip(self.params, self.saved, strict=True):
                param.copy_(value)
            for key, tensor in _state_tensors(self.optimizer).items():
                if key in self.state:
                    tensor.copy_(self.state[key])
                else:
                    tensor.zero_()
        torch.cuda.set_rng_state(self.rng, self.device)


def _state_tensors(optimizer, clone: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    if optimizer is None:
        return {}
    state = optimizer.state_dict()["state"]  # by parameter index; the live tensors
    return {
        (i, k): (v.detach().clone() if clone else v)
        for i, entries in state.items()
        for k, v in entries.items()
        if isinstance(v, torch.Tensor)
    }


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Every entry of the state_dict (parameters and buffers, any dtype), as stored."""
    return numpy_state(model.state_dict())


def _best_from(ckpt: Checkpoint, model: nn.Module, device: torch.device):
    """The best epoch a checkpoint recorded: (epoch, accuracy, its weights or None)."""
    if ckpt.best_epoch is None:
        return None
    state = None
    if ckpt.best_weights:
        like = model.state_dict()
        state = {k: v.to(device) for k, v in torch_state(ckpt.best_weights, like).items()}
    return ckpt.best_epoch, ckpt.val_accuracies[ckpt.best_epoch - 1], state


def _optimizer_state(optimizer) -> dict[str, np.ndarray]:
    """Adam's state (step count, first and second moments) per parameter, as arrays named
    '<parameter index>.<name>'; empty for plain SGD, which keeps none."""
    return {f"{i}.{k}": v.cpu().numpy().copy() for (i, k), v in _state_tensors(optimizer).items()}


def _load_checkpoint(model: nn.Module, optimizer, ckpt: Checkpoint, device: torch.device) -> None:
    state = torch_state(ckpt.weights, model.state_dict())
    try:
        model.load_state_dict(state)  # checks every name and shape; copies in place
    except RuntimeError as exc:
        raise ValueError(
            f"the checkpoint after epoch {ckpt.epoch} does not fit this model ({first_line(exc)})"
        ) from None
    if optimizer is not None and ckpt.optimizer:
        entries: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in ckpt.optimizer.items():
            index, name = key.split(".", 1)
            entries.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
        saved = optimizer.state_dict()  # the hyperparameters this run was made with
        saved["state"] = entries
        optimizer.load_state_dict(saved)  # moves each moment to its parameter's device
    torch.set_rng_state(torch.from_numpy(np.asarray(ckpt.rng_state, dtype=np.uint8).copy()))
    if ckpt.cuda_rng_state is not None and device.type == "cuda":
        rng = np.asarray(ckpt.cuda_rng_state, dtype=np.uint8).copy()
        torch.cuda.set_rng_state(torch.from_numpy(rng), device)

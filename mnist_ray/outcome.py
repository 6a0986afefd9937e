"""What a training task hands back: one typed value, built in the task, read by the driver.

    from mnist_ray.outcome import TrainOutcome
    outcome = TrainOutcome(weights=..., epoch_costs=[...], ...)   # training_stream's last yield
    outcome.epoch_costs[-1]                                       # the final cost
    schema.finished_run_row(outcome, ...)                         # its run-row columns, whole

Each field that is also a column of the `runs` table goes into the run row as it is
(schema.finished_run_row takes the outcome whole), so a new column that training produces
is a field here and a column there, nothing between. Imports nothing of the package: the
task and the driver both have it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrainOutcome:
    weights: dict[str, np.ndarray]  # the module's state_dict, as numpy arrays
    epoch_costs: list[float]  # every epoch's average cost, restored ones included
    train_seconds: float
    device: str  # what torch trained on, e.g. "cuda:0 (NVIDIA H100 ...)"
    cuda_graph: bool
    threads: int | None  # torch's threads in the task; None on a GPU
    attempts: int | None  # Ray's attempt number + 1; None in a Tune trial (sweep.py counts)
    resumed_from_epoch: int  # the checkpoint's epoch this attempt went on from; 0: none
    torch_version: str
    peak_rss_mib: float | None
    gpu_peak_mib: float | None
    node_id: str  # where the task ran (taskinfo.where)
    hostname: str
    gpu_ids: list[int]
    pid: int | None = None  # the task's process
    onnx: bytes | None = None  # a built-in model's ONNX export: what the shards score with
    export_failure: str | None = None  # why an export that was tried failed; None otherwise
    lrs: list[float] | None = None  # each epoch's learning rate (at its first step)
    val_costs: list[float] | None = None  # with a validation split (--val-split)
    val_accuracies: list[float] | None = None
    best_epoch: int | None = None  # with a validation split: the best by its accuracy
    stopped_early: bool | None = None  # with --patience: whether it ended the run early


class Diverged(ArithmeticError):
    """A batch's cost that is not finite: the run ends at once, failed, naming where."""

    def __init__(self, epoch: int, step: int, cost: float):
        super().__init__(f"diverged at epoch {epoch}, step {step}: cost {cost}")
        self.epoch, self.step, self.cost = epoch, step, cost

    def __reduce__(self):  # across Ray: rebuilt from its fields, not its message
        return Diverged, (self.epoch, self.step, self.cost)


def epoch_line(epoch) -> str:
    """The line an epoch prints: the tutorial's `Epoch: 0001 cost = 0.535150588`, then,
    where the run has them, its learning rate and its validation figures. `epoch` is a
    train.Epoch, or anything with the same fields (a task's streamed item)."""
    line = f"Epoch: {epoch.epoch:04d} cost = {epoch.cost:.9f}"
    if epoch.lr is not None:
        line += f" lr = {epoch.lr:.9f}"
    if epoch.val_cost is not None:
        line += f" val_cost = {epoch.val_cost:.9f} val_accuracy = {epoch.val_accuracy:.4f}"
    return line

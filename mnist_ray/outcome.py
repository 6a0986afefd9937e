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

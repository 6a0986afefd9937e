"""What the training task asks Ray for, checked against the cluster before it is submitted.

    from mnist_ray.placement import training_request
    num_gpus = training_request("auto", cpus=2)   # 1 when the cluster has a GPU, else 0

A request no node can meet would wait forever in Ray's queue with nothing said (Ray only
logs an "infeasible task" warning in the cluster's own logs), so it is refused here in one
line: `--gpus 1` on a cluster without a GPU, `--cpus N` larger than every node's CPUs, or
both together on no single node. Only nodes alive now count: an autoscaler's future nodes
can't be seen from here, so on such a cluster ask for what a running node has.

An embedded Ray is this machine: `fits_this_machine` refuses what it can't meet before
Ray starts (nothing announced, nothing written), from the CPU count and torch's CUDA view.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mnist_ray.config import ConfigError
from mnist_ray.errors import ClusterError
from mnist_ray.output import say


def machine_cpus() -> int:
    """The CPUs this process may run on (an embedded Ray sees as many)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fits_this_machine(gpus: str, cpus: float, gpus_param="gpus", cpus_param="cpus") -> None:
    """For an embedded run, before Ray starts: refuse a GPU this machine lacks and more
    CPUs than it has (ConfigError, named after the option: exit 2)."""
    have = machine_cpus()
    if cpus > have:
        raise ConfigError(
            cpus_param, f"{cpus:g} CPUs asked for, and this machine has {have}; use {have} or fewer"
        )
    if gpus in ("0", "auto") or not float(gpus):
        return
    import torch  # the GPU's view that training itself will have

    if torch.cuda.device_count() < 1:
        raise ConfigError(
            gpus_param,
            f"{gpus}: this machine has no GPU (torch sees no CUDA device); use --gpus auto "
            "or 0 to train on the CPU, or --address a cluster that has one",
        )


def gpu_request(gpus: str, log: Callable[[str], None] = say) -> int:
    """How many GPUs the training task asks for: --gpus auto|0|1 against what the cluster has."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if gpus == "0":
        return 0
    if gpus == "1":
        if have < 1:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            raise ClusterError(
                f"the Ray cluster has no GPU ({cpus} CPUs, 0 GPUs), so the task would "
                "wait forever; use --gpus auto or 0 to train on the CPU",
                about="gpus",
                value=gpus,
            )
        return 1
    if have >= 1:
        return 1
    log("No GPU in the Ray cluster: training on the CPU.")
    return 0


def _nodes() -> list[dict[str, float]]:
    """Each alive node's total resources."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_fits(cpus: int, num_gpus: int) -> None:
    """Refuse `cpus` CPUs (with `num_gpus` GPUs) when no alive node has that many."""
    nodes = _nodes()
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= num_gpus for n in nodes):
        return
    fitting = [n for n in nodes if n.get("GPU", 0) >= num_gpus]
    most = int(max((n.get("CPU", 0) for n in fitting), default=0))
    where = "node with a GPU" if num_gpus else "node"
    raise ClusterError(
        f"no node of the Ray cluster has {cpus} CPUs (the largest {where} has {most}), "
        f"so the task would wait forever; use --cpus {max(most, 1)} or fewer",
        about="cpus",
        value=str(cpus),
    )


def training_request(gpus: str, cpus: int, log: Callable[[str], None] = say) -> int:
    """The GPUs the training task asks for, once its whole request is known to fit a node."""
    num_gpus = gpu_request(gpus, log)
    check_fits(cpus, num_gpus)
    return num_gpus

"""Faults injected into Ray's workers for the fault tests; the package has no switch for them.

    ray.init(address, runtime_env=faults.runtime_env(folder))
    (folder / "shard-1").touch()   # the next shard task to start SIGKILLs its own worker

`runtime_env(folder)` puts this folder (tests/) on the workers' PYTHONPATH and names
`arm` as Ray's `worker_process_setup_hook`, so every worker process of that driver's job
runs `arm()` once when it starts, before any task. `arm` wraps three functions the tasks
call, in the worker only; other jobs on the same cluster, and the package itself, never
see any of it. Each wrapper looks for a token file in `folder` and, when it is the one to
remove it (an unlink is atomic: of tasks racing for one token, one wins), acts:

    train-*              a training task kills its own worker (SIGKILL) as it starts,
                         before it has read or written any checkpoint
    checkpoint-<E>-*     a training task kills its own worker right after it has written
                         the checkpoint of epoch E, so the retry resumes from it
    shard-*              a shard task kills its own worker as it starts
    stall-shard-<node>   a shard task on that Ray node sleeps until the test removes the
                         node, so the node surely dies with a task on it

A SIGKILL is a real worker death, as the OOM killer would cause, that Ray has to retry.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FOLDER = "MNIST_RAY_TEST_FAULTS"  # the workers' environment: where the tokens are


def runtime_env(folder: Path) -> dict:
    """The runtime_env of a driver whose tasks take faults from `folder`."""
    path = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    return {
        "env_vars": {"PYTHONPATH": os.pathsep.join(p for p in path if p), FOLDER: str(folder)},
        "worker_process_setup_hook": "faults.arm",
    }


def arm() -> None:
    """Ray's worker_process_setup_hook: wrap what the tasks call. Raises if a name moved,
    so a renamed function fails the fault tests instead of silently disarming them."""
    import ray

    from mnist_ray import checkpoints, cluster

    folder = Path(os.environ[FOLDER])
    latest, save, evaluate_shard = checkpoints.latest, checkpoints.save, cluster.evaluate_shard

    def latest_or_die(store, run_id, **kwargs):  # the first thing a training task does
        _take(folder, "train-*")
        return latest(store, run_id, **kwargs)

    def save_then_die(store, run_id, ckpt):
        written = save(store, run_id, ckpt)
        _take(folder, f"checkpoint-{ckpt.epoch}-*")
        return written

    def evaluate_or_die(*args, **kwargs):  # what a shard task calls first
        stall = folder / f"stall-shard-{ray.get_runtime_context().get_node_id()}"
        if _unlink(stall):
            time.sleep(600)  # not a wait for anything: the test removes this node long before
        _take(folder, "shard-*")
        return evaluate_shard(*args, **kwargs)

    checkpoints.latest, checkpoints.save = latest_or_die, save_then_die
    cluster.evaluate_shard = evaluate_or_die


def _take(folder: Path, pattern: str) -> None:
    """SIGKILL this process if it is the one to remove a token matching `pattern`."""
    for token in sorted(folder.glob(pattern)):
        if _unlink(token):
            os.kill(os.getpid(), signal.SIGKILL)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True

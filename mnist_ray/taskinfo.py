"""What a running Ray task reports about itself: where it ran, which attempt it is, how much
memory its process has used. Called inside the tasks; the driver stores the answers.

    from mnist_ray.taskinfo import current_attempt, peak_rss_mib, where
    outcome = {"attempts": current_attempt(), "peak_rss_mib": peak_rss_mib(), **where()}
"""

from __future__ import annotations

import os
import socket
import sys

import ray


def where() -> dict:
    """The node, host, GPUs and process the current task runs in."""
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "hostname": socket.gethostname(),
        "gpu_ids": [int(i) for i in ray.get_gpu_ids()],
        "pid": os.getpid(),
    }


def current_attempt() -> int | None:
    """Which attempt of the current task this is: 1, or 1 + the retries Ray made after its
    worker or node died; 1 outside a Ray task. None inside an actor, such as a Tune trial:
    Ray retries tasks, and a trial that Tune restarts is a new actor, uncounted by Ray.
    Call it from the task's own thread (Ray keeps the current task per thread).

    Ray 2.60 has no public call for it: the runtime context names the task but not the
    attempt, and the state API, which does, needs the dashboard and lags behind. The core
    worker knows it (it tags the task's log lines and events with it)."""
    if not ray.is_initialized():
        return 1
    if ray.get_runtime_context().get_actor_id() is not None:
        return None
    core_worker = ray._private.worker.global_worker.core_worker
    return 1 + int(core_worker.get_current_task_attempt_number())


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

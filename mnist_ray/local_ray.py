"""Starting an embedded Ray when other mnist-ray commands start theirs at the same time.

    with start_lock(log):          # one start at a time on this machine, per user
        ray.init(address="local", ...)

Ray gives a new node's raylet a fixed 30 s to register with its GCS and otherwise fails
(`The current node timed out during startup`). Eight commands starting their Rays at once
on a 2-core machine made that happen. Taking turns keeps each start within its 30 s; a
start that still times out (the machine busy with other work) is cleaned up and tried
again, once.

Why not share one Ray between concurrent commands: an embedded Ray lives and dies with
the command that started it, so a command that joined another's Ray would lose its tasks
when that command ended or was interrupted, and the first command would have to outlive
every later one to avoid that. Separate Rays keep each command's life its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

START_TIMEOUT = "timed out during startup"  # Ray's message when a raylet did not register


def lock_path() -> Path:
    """One lock per user and machine (the temp dir is per machine; the uid keeps users apart)."""
    return Path(tempfile.gettempdir()) / f"mnist-ray-{os.getuid()}" / "ray-start.lock"


@contextlib.contextmanager
def start_lock(log: Callable[[str], None]) -> Iterator[None]:
    """Hold the machine's start lock; the kernel frees it if this process dies."""
    path = lock_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("Waiting for another mnist-ray command to finish starting its Ray ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timed_out(exc: BaseException) -> bool:
    return START_TIMEOUT in str(exc)


def end_children() -> None:
    """After a failed start: SIGKILL the processes this one started (the GCS, the raylet,
    Ray's agents), which Ray leaves running when its start raises; their workers follow."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the parent pid is the 2nd field after the ")" that ends the command name
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)

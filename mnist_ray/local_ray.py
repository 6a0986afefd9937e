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
import functools
import os
import secrets
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

START_TIMEOUT = "timed out during startup"  # Ray's message when a raylet did not register
TOKEN_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # how Ray takes a token
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": every Ray process stays on loopback
NO_METRICS = "RAY_enable_metrics_collection"  # "0": no Prometheus port, which has no token


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


@contextlib.contextmanager
def loopback_and_own_token() -> Iterator[None]:
    """The embedded Ray on loopback only, with token authentication and a token of its own.

    Loopback: `_node_ip_address="127.0.0.1"` alone does not do it. Each of Ray's processes
    works out its own address, and unless told the cluster is local only it takes the
    machine's outside address: the GCS, the raylet, the workers and the driver then listen
    on all interfaces, the agents on the outside address. Ray's own switch for
    single-machine clusters (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), in the environment its
    processes inherit, keeps every one of them on 127.0.0.1 (tests/test_loopback.py).

    Token: Ray turns token auth on for a new local Ray only when RAY_AUTH_MODE is unset,
    and then writes ~/.ray/auth_token, which a later `ray start --head` of this user picks
    up. A fresh random token in the environment keeps auth on whatever RAY_AUTH_MODE says
    and writes no file; only this command's processes know it.

    Metrics: the agent's Prometheus endpoint answers anyone, token or not; an embedded Ray
    has no dashboard to read it, so it is not started."""
    from ray._private import ray_constants
    from ray._raylet import Config

    names = (*TOKEN_VARS, LOCAL_ONLY, NO_METRICS)
    saved = {k: os.environ.get(k) for k in names}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": _process_token(),
            LOCAL_ONLY: "0",
            NO_METRICS: "0",
        }
    )
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: the driver's own copy
    Config.initialize("")  # Ray caches its config; refresh it, as Ray's own switch does
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        Config.initialize("")


@functools.cache
def _process_token() -> str:
    """One token per process: Ray's C++ side reads the token once and keeps it, so a second
    embedded Ray in the same process (a notebook, a test) must get the same one."""
    return secrets.token_hex(32)


def timed_out(exc: BaseException) -> bool:
    return START_TIMEOUT in str(exc)


def end_children() -> None:
    """After a failed start: SIGKILL the Ray processes this one started (the GCS, the
    raylet, Ray's agents), which Ray leaves running when its start raises; their workers
    follow. Other children of this process (a notebook's, say) are left alone."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the parent pid is the 2nd field after the ")" that ends the command name
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid != me:
            continue
        with contextlib.suppress(OSError):  # Ray's programs only: they run from its package
            if b"/ray/" in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)

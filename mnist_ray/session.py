"""Connecting to Ray, the one place that does: an embedded local Ray or an existing cluster.

    from mnist_ray.session import connect
    with connect(None):                # an embedded Ray, all of it ended on the way out
        ray.get(task.remote())         # connect("HOST:PORT"), "auto", "ray://HOST:10001"

Inside, Ray's output goes to stderr; after it nothing of an embedded Ray is left running,
whatever ended the block (an error, a Ctrl-C at any moment).

The one module that depends on Ray's version. Besides ray.init/shutdown it leans on:
- Ray >= 2.52 (token auth), `ray._private.ray_constants.ENABLE_RAY_CLUSTER` (read at
  import), `ray._raylet.Config.initialize("")` (re-reads Ray's config from the environment);
  every private name is listed in internals.py;
- RAY_AUTH_MODE/_TOKEN/_TOKEN_PATH, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER,
  RAY_enable_metrics_collection; Ray's messages quoted in START_TIMEOUT, CLIENT_SERVER_FAILED;
- how a local node runs: the driver forks the GCS, raylet and helpers from Ray's package
  (the kernel kills them when it dies: PR_SET_PDEATHSIG); the raylet forks the agents and
  workers (titled `ray::...`), which outlive it; Ray prints to descriptor 1 and sys.stdout.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from mnist_ray import leftovers, signals
from mnist_ray.errors import ClusterError, token_error
from mnist_ray.liveness import proc_stat
from mnist_ray.output import say
from mnist_ray.streams import ray_output_to_stderr

MIN_RAY = (2, 52)  # token authentication arrived in 2.52
START_TIMEOUT = "timed out during startup"  # Ray's message when a raylet did not register
CLIENT_SERVER_FAILED = "Starting Ray client server failed"  # a ray:// start to try again
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": every Ray process stays on loopback
NO_METRICS = "RAY_enable_metrics_collection"  # "0": no Prometheus port, which has no token
QUIET = dict(log_to_driver=False, logging_level=logging.ERROR)  # Ray's logs stay in its files
# Ray 2.52-2.5x warn in ray.init, on stderr, that a later Ray will stop setting
# CUDA_VISIBLE_DEVICES="" for tasks that ask no GPU. Our tasks decide their device
# themselves (a CPU task never looks for CUDA), so the tip is Ray's business, not the user's:
# it is silenced, and the behaviour kept (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO is left alone).
warnings.filterwarnings(
    "ignore",
    message=r"Tip: In future versions of Ray, Ray will no longer override",
    category=FutureWarning,
)


def check_ray_version(version: str) -> None:
    """Refuse a Ray without token authentication, rather than run an embedded Ray open to all."""
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers is None or tuple(int(n) for n in numbers.groups()) < MIN_RAY:
        floor = f"{MIN_RAY[0]}.{MIN_RAY[1]}"
        raise ClusterError(
            f"Ray {version} is too old: mnist-ray needs Ray >= {floor} (token authentication); "
            f"pip install -U 'ray[default]>={floor}'"
        )


@contextmanager
def connect(
    address: str | None, log: Callable[[str], None] = say, polled: bool = True
) -> Iterator[None]:
    """An embedded local Ray (address None) or an existing cluster ('auto', 'host:port',
    'ray://host:10001'); disconnects, and ends an embedded one, on the way out. `polled`:
    the block waits in short calls, so through Ray Client a Ctrl-C can wait for the one in
    flight (signals.held_between_calls); a block that waits in one long call says False."""
    check_ray_version(ray.__version__)
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():  # a caller (tests, a notebook) already connected: use that
        yield
        return
    with ray_output_to_stderr():  # Ray prints to stdout even with log_to_driver=False
        yield from _embedded(log) if address is None else _existing(address, log, polled)


def _embedded(log: Callable[[str], None]) -> Iterator[None]:
    """A new instance (never a cluster left by `ray start`): loopback, a token of its own.
    `finally` ends all it started even if ray.init was cut short: Ray's shutdown knows the
    node only once ray.init has built it, and its fate-sharing spares the raylet's agents."""
    kwargs = dict(QUIET, address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    started, theirs = time.perf_counter(), _ray_below(os.getpid())  # a test's Cluster, say
    with loopback_and_own_token(), _adopting_orphans():
        try:
            with _ctrl_c(wait=False):
                failure = _start_local(kwargs, log, theirs)
            if failure is not None:
                raise _connect_error(None, failure, "") from None
            # a record for the next command, should this driver be killed (leftovers.py)
            with leftovers.recorded(_session_dir(theirs)):
                yield from _run(None, log, started)
        finally:
            with _ctrl_c(wait=True):
                ours = _ray_below(os.getpid(), theirs)  # Ray's shutdown leaves some unreaped
                try:
                    ray.shutdown()  # Ray's graceful stop, when ray.init got as far as a node
                finally:
                    end_children(theirs, ours)  # whatever Ray did not know of or did not stop


def _existing(address: str, log: Callable[[str], None], polled: bool) -> Iterator[None]:
    started = time.perf_counter()
    _keep_loopback(address)
    _token_alone_is_enough()
    client = address.startswith("ray://")  # Ray Client: signals held between its calls
    with signals.held_between_calls() if client and polled else contextlib.nullcontext():
        yield from _connected(address, log, started)


def _connected(address: str, log: Callable[[str], None], started: float):
    log(f"Connecting to Ray at {address} ...")
    with _held_stderr() as held:
        for attempt in (1, 2):
            try:
                ray.init(**QUIET, address=address)
                failure = None
            except (ConnectionError, RuntimeError, ValueError) as exc:
                failure = exc
            # ray://: the head starts a server per client, on the next port of its range; one
            # still closing after the previous client makes the start fail. Again, later.
            if failure is None or CLIENT_SERVER_FAILED not in str(failure) or attempt == 2:
                break
            ray.shutdown()  # whatever half of the client session the failure left
            time.sleep(2)
    if failure is not None:
        raise _connect_error(address, failure, held[0]) from None
    sys.stderr.write(held[0])  # what Ray said while connecting, now that it worked
    try:
        yield from _run(address, log, started)
    finally:
        if not bounded(ray.shutdown, 10):
            # Ray Client's close waits for every call in flight, and one cut by a second
            # Ctrl-C may never end: that close dies with the process, and Ray's own attempt
            # at exit is not made (it would wait too).
            atexit.unregister(ray.shutdown)


def bounded(call: Callable[[], None], timeout: float) -> bool:
    """`call()`; through Ray Client, given at most `timeout` seconds (False: it had not
    returned). A Ctrl-C that lands inside one of Ray Client's calls can leave the next one
    waiting for a reply that never comes (seen: `ray.cancel` stuck in DataClient.Terminate,
    ray.shutdown in grpc's channel close), and the driver with it."""
    if not ray.util.client.ray.is_connected():
        call()
        return True
    worker = threading.Thread(target=call, name="ray-client-call", daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()


def _run(address: str | None, log: Callable[[str], None], started: float) -> Iterator[None]:
    have, took = ray.cluster_resources(), time.perf_counter() - started
    what = "Started a local Ray" if address is None else f"Connected to Ray at {address}"
    log(f"{what}: {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs ({took:.1f} s)")
    yield


# ---- the embedded Ray: taking turns to start, loopback, its own token, ended whole ------------
# Ray gives a new raylet a fixed 30 s to register, which eight commands starting at once on 2
# cores overran: starts take turns. Commands do not share one Ray (a command that joined
# another's would lose its tasks when that one ended).


def _start_local(kwargs: dict, log: Callable[[str], None], theirs: set[int]) -> Exception | None:
    """Start the embedded Ray, taking turns; a start that timed out is ended, then retried."""
    for attempt in (1, 2):
        with start_lock(log):
            try:
                ray.init(**kwargs)
                return None
            except Exception as exc:  # Ray raises a bare Exception for a start that timed out
                if START_TIMEOUT not in str(exc) or attempt == 2:
                    return exc
                ray.shutdown()
                end_children(theirs)
                log("Ray's start timed out on a busy machine; starting it again ...")


@contextmanager
def start_lock(log: Callable[[str], None]) -> Iterator[None]:
    """Hold the machine's start lock, one per user (the temp dir is per machine, the uid
    keeps users apart); the kernel frees it if this process dies."""
    path = Path(tempfile.gettempdir()) / f"mnist-ray-{os.getuid()}" / "ray-start.lock"
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


@contextmanager
def loopback_and_own_token() -> Iterator[None]:
    """The embedded Ray on loopback only, with token authentication and a token of its own.
    Loopback: `_node_ip_address` alone does not do it; unless told the cluster is local
    only, each Ray process takes the machine's outside address (tests/test_loopback.py).
    Token: Ray turns auth on for a new local Ray only if RAY_AUTH_MODE is unset, writing
    ~/.ray/auth_token for a later `ray start --head`; a random token in the environment
    keeps auth on, no file. Metrics: their port answers anyone; nothing here reads them."""
    from ray._private import ray_constants
    from ray._raylet import Config

    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", LOCAL_ONLY, NO_METRICS)
    saved = {k: os.environ.get(k) for k in names}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_process_token())
    os.environ.update(dict.fromkeys((LOCAL_ONLY, NO_METRICS), "0"))
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: the driver's own copy
    Config.initialize("")  # Ray caches its config; refresh it, as Ray's own switch does
    try:
        yield
    finally:
        for k in names:
            os.environ.pop(k, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        Config.initialize("")


@functools.cache
def _process_token() -> str:
    """One token per process: Ray's C++ side reads the token once and keeps it, so a second
    embedded Ray in the same process (a notebook, a test) must get the same one."""
    return secrets.token_hex(32)


def end_children(spare: Collection[int] = (), ours: Collection[int] = (), timeout=10.0) -> None:
    """SIGKILL every Ray process below this one (GCS, raylet, helpers, their agents and
    workers, orphans adopted here) but the trees of `spare`, each stopped as found so none
    starts another unseen; return once gone and reaped, with those of `ours` (Ray's, seen
    earlier) that have exited since. Other children (a notebook's) are left alone."""
    frozen: set[int] = set()
    for _ in range(100):  # a stopped process starts nothing: a few rounds find them all
        if not (found := _ray_below(os.getpid(), spare) - frozen):
            break
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= found
    for pid in frozen:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    frozen |= set(ours)
    deadline = time.monotonic() + timeout
    while frozen and time.monotonic() < deadline:
        for pid in list(frozen):
            with contextlib.suppress(ChildProcessError):  # reaped here if this is its parent
                os.waitpid(pid, os.WNOHANG)
            if not _stat(pid)[0]:  # a zombie is not gone: its dying parent hands it to us
                frozen.discard(pid)
        time.sleep(0.02 if frozen else 0)


def _session_dir(theirs: set[int]) -> str:
    """The embedded Ray's session folder, from its processes' command lines (the GCS and
    the raylet are given `--session-dir`/`--session_dir`); "" when none says it."""
    for pid in sorted(_ray_below(os.getpid(), theirs)):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if found := re.search(rb"--session[-_]dir=([^\0]+)", cmdline):
                return found.group(1).decode(errors="replace")
    return ""


def _ray_below(me: int, spare: Collection[int] = ()) -> set[int]:
    """Live processes in the trees of this process's Ray children (none without /proc)."""
    stats = {int(e.name): _stat(int(e.name)) for e in Path("/proc").glob("[0-9]*")}
    parent = {pid: ppid for pid, (state, ppid) in stats.items() if state not in ("", "Z")}
    below = {p for p, ppid in parent.items() if ppid == me and p not in spare and _is_rays(p)}
    while grown := {pid for pid, ppid in parent.items() if ppid in below} - below:
        below |= grown
    return below


def _stat(pid: int) -> tuple[str, int]:  # (state letter, parent pid); ("", 0) once gone
    fields = proc_stat(pid)
    return (fields[0], int(fields[1])) if fields else ("", 0)


def _is_rays(pid: int) -> bool:
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"/ray/" in cmdline or cmdline.startswith(b"ray::")
    return False


@contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Linux: adopt descendants' orphans (PR_SET_CHILD_SUBREAPER) while the embedded Ray
    runs, so agents whose raylet has gone stay below, where end_children finds them."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        was = ctypes.c_int()
        adopting = prctl(37, ctypes.byref(was), 0, 0, 0) == 0 and prctl(36, 1, 0, 0, 0) == 0
    except (AttributeError, OSError):  # not Linux
        adopting = False
    try:
        yield
    finally:
        if adopting:
            prctl(36, was.value, 0, 0, 0)


# Python drops an exception raised in an at-fork callback ("Exception ignored in: _releaseLock",
# logging's lock left taken), and ray.init forks: a Ctrl-C landing in those callbacks is held
# until they are over, then sent again. Registered last, these run first before, last after.
_FORK = {"now": False, "held": False}


@functools.cache
def _watch_forks() -> None:
    os.register_at_fork(before=lambda: _FORK.update(now=True), after_in_parent=_fork_ended)


def _fork_ended() -> None:
    _FORK["now"] = False
    if _FORK["held"]:  # sent from here, it would be handled here, and dropped again
        threading.Thread(target=_send_held, daemon=True).start()


def _send_held() -> None:
    time.sleep(0.05)
    if _FORK["held"]:  # not yet raised some other way
        _FORK["held"] = False
        os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def _ctrl_c(wait: bool) -> Iterator[None]:
    """Ctrl-C made sure of: raised at once while Ray starts (wait=False), and at the end if
    Python dropped it (in a __del__, say); while Ray's processes end (wait=True), after."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # Ctrl-C ignored (a background job) or handled by the caller: theirs
        return
    _watch_forks()
    pressed: list[int] = []

    def press(signum, frame):
        pressed.append(signum)
        if _FORK["now"]:
            _FORK["held"] = True
        elif not wait:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, press)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _FORK["held"] = False
    if pressed:
        raise KeyboardInterrupt


# ---- an existing cluster: HOST:PORT, ray://, auto --------------------------------------------


@contextmanager
def _held_stderr() -> Iterator[list[str]]:
    """Hold what is written to descriptor 2 while connecting: Ray's C++ client logs a line a
    second as it retries (20 s of "InvalidAuthToken" with no token); held, they make one."""
    held: list[str] = []  # what was written, once the block has ended
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.append(sink.read().decode(errors="replace"))


def _token_alone_is_enough() -> None:
    """Ray's client sends RAY_AUTH_TOKEN only with RAY_AUTH_MODE=token; as for the Jobs API
    (jobs.py), a token given alone is meant to be used."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip() and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        # Ray caches its config at import: refresh it, as Ray's own switch to token mode
        # does (Ray 2.60's authentication_token_setup._enable_token_auth, absent in 2.52).
        from ray._raylet import Config

        Config.initialize("")


def _connect_error(address: str | None, exc: BaseException, said: str) -> Exception:
    where = address or "a local Ray instance"
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        return token_error(where, os.environ.get("RAY_AUTH_MODE", "").lower() != "token")
    said = " ".join(str(exc).split())  # Ray's client puts the reason on a second line
    said = said if len(said) <= 300 else said[:297] + "..."
    return ClusterError(f"could not connect ({said or type(exc).__name__})", "address", where)


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds on a host:port nothing listens on, instead of Ray's long retries."""
    if address == "auto" or address.startswith(("local", "http://", "https://")):
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError("expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'", "address", address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        said = f"nothing answers at {host}:{port} ({exc.strerror or exc}); is the Ray head "
        said += "running? (`ray start --head`, or leave --address out for a local Ray)"
        raise ClusterError(said, "address", address) from None


def _keep_loopback(address: str) -> None:
    """Ray rewrites 127.0.0.1 to the machine's outside IP (services.resolve_ip_for_localhost),
    so a head bound to loopback looks unreachable and ray.init retries for minutes. Ray's
    switch for single-machine clusters keeps loopback; it is read at import: set its value."""
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False

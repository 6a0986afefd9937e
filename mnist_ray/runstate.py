"""How a run that did not finish is left: its row's status, and the signals that stop it.

    from mnist_ray import runstate
    store.write_row("runs", runstate.unfinished(settings, "running", [], None))
    left = runstate.Leaving(store, settings, costs, keep=True)
    with runstate.sigterm_stops():     # SIGTERM raises Stopped, a KeyboardInterrupt
        try:
            ...                        # train; left.interrupted() first thing at Ctrl-C
        except BaseException as exc:
            left.because(exc)          # interrupted, or failed with its cause; or discarded
            raise

`settings` are the run's identity and settings (run_id, created_at, the TrainConfig fields,
cpus, gpus, checkpoint_every): every row of a run holds them, so `submit train --resume`
can go on from the row alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from mnist_ray import checkpoints
from mnist_ray.config import first_line
from mnist_ray.errors import NamedError
from mnist_ray.schema import RUNS, run_row
from mnist_ray.store import Store, StoreError, now


class Stopped(KeyboardInterrupt):
    """SIGTERM (`jobs stop`, `ray job stop`) during training: handled as Ctrl-C is."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM raises Stopped in the main thread, so the run is left interrupted rather
    than killed mid-write (ray.init's own handler exits at once, leaving it running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _deliver(Stopped())

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


# ---- signals held between calls ---------------------------------------------------------------
# Through Ray Client (ray://) every Ray call is a gRPC call, and a KeyboardInterrupt raised in
# the middle of grpc's own Python code can leave a call its channel's close waits on for ever
# (seen: the driver stuck in ray.shutdown after a Ctrl-C). There, a signal is held and raised
# where no call is in flight: at the next `raise_held()` (the polling loops) or at the end.
_HOLDING: list[bool] = []
_HELD: list[KeyboardInterrupt] = []


def _deliver(exc: KeyboardInterrupt) -> None:
    """Raise `exc` now; while held, at the next raise_held(). Pressed twice, it is not held:
    a user who insists is not kept waiting on a call that never returns."""
    if _HOLDING and not _HELD:
        _HELD.append(exc)
        return
    _HELD.clear()
    raise exc


def raise_held() -> None:
    """Raise a Ctrl-C or SIGTERM that came while held (see held_between_calls)."""
    if _HELD:
        raise _HELD.pop()  # one at most: a second press is never held


@contextlib.contextmanager
def held_between_calls() -> Iterator[None]:
    """Ctrl-C and SIGTERM in the block are raised by `raise_held()`, or at its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def press(signum, frame):
        _deliver(KeyboardInterrupt())

    before = signal.getsignal(signal.SIGINT)
    if before is signal.default_int_handler:  # not ignored (a background job): ours to hold
        signal.signal(signal.SIGINT, press)
    _HOLDING.append(True)
    try:
        yield
    except BaseException:
        _HELD.clear()  # the block ended on its own exception: that one goes on
        raise
    finally:
        _HOLDING.pop()
        if before is signal.default_int_handler:
            signal.signal(signal.SIGINT, before)
    raise_held()


def unfinished(settings: dict, status: str, costs: list[float], failure: str | None) -> dict:
    """A run row holding the run's settings and no outcome: running, interrupted, failed.
    `costs`: the epochs done so far (not a final cost: readers show none)."""
    empty = {n: None for n in RUNS.names}
    state = dict(status=status, failure=failure, epoch_costs=costs, updated_at=now())
    return run_row(**empty | settings | state)


def failure(exc: BaseException) -> str:
    """A failed run's cause, one line: an error of ours says it already; others by type."""
    if isinstance(exc, NamedError):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def discard(store: Store, run_id: str) -> None:
    """`--discard`: a run that did not finish leaves nothing (its row, its checkpoints)."""
    checkpoints.clear(store, run_id)
    with contextlib.suppress(OSError, FileNotFoundError):
        store.fs.delete_file(store.path(f"runs/{run_id}.parquet"))


class Leaving:
    """Writes, once, the state a run was left in; with keep=False deletes the run instead."""

    def __init__(self, store: Store, settings: dict, costs: list[float], keep: bool = True):
        self.store, self.settings, self.costs, self.keep = store, settings, costs, keep
        self.written = False

    def _write(self, status: str, cause: str | None) -> None:
        if self.keep and not self.written:
            self.written = True
            # A store that fails now can't be told more; the liveness rule (liveness.py)
            # reads the run as interrupted once its driver is gone.
            with contextlib.suppress(StoreError):
                self.store.write_row("runs", unfinished(self.settings, status, self.costs, cause))

    def interrupted(self) -> None:
        """First thing at Ctrl-C or SIGTERM: `jobs stop` kills the driver 3 s later."""
        self._write("interrupted", None)

    def because(self, exc: BaseException) -> None:
        """Training ended with `exc`: interrupted (Ctrl-C, SIGTERM, exit) or failed. A
        request refused before any training (an error naming the option: `--gpus 1` on a
        cluster without a GPU, an `--address` nothing answers at) was bad input, not a
        run: it leaves nothing, as bad input never does."""
        refused = isinstance(exc, NamedError) and exc.about is not None
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            self.interrupted()
        elif not refused:
            self._write("failed", failure(exc))
        if refused or not self.keep:
            discard(self.store, self.settings["run_id"])

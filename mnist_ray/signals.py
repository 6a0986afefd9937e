"""Ctrl-C and SIGTERM while a run trains: SIGTERM stops it as Ctrl-C does, and through Ray
Client both wait for the call in flight.

    from mnist_ray import signals
    with signals.sigterm_stops():          # SIGTERM raises Stopped, a KeyboardInterrupt
        ...
    with signals.held_between_calls():     # ray://: a signal is raised between calls
        while waiting:
            signals.raise_held()           # the polling loop, where no call is in flight
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


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

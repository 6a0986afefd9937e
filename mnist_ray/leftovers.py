"""What a killed embedded driver left running, ended by the next mnist-ray command.

    from mnist_ray import leftovers
    with leftovers.recorded(session_dir):   # session.py, around an embedded Ray
        ...
    leftovers.end_leftovers(log)            # cli.py, first thing in every command

An embedded Ray's GCS and raylet die with their driver (the kernel's PR_SET_PDEATHSIG),
and a driver that ends normally ends the rest (session.end_children). A driver killed
with SIGKILL can do neither, and the raylet's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) live on for a minute or more. So each embedded driver leaves a
record while its Ray runs: `$TMPDIR/mnist-ray-<uid>/sessions/<pid>.json`, holding its pid,
the pid's start time and its Ray session folder. The next mnist-ray command of the same
user on the machine reads the records; for one whose driver is gone (or whose pid is
another process now) it ends the processes that hold files open in that session folder,
this user's only, says so in one line, and drops the record. A Ray that is not mnist-ray's
(no record), or whose driver still runs, is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mnist_ray.liveness import started

FOLDER = Path(tempfile.gettempdir()) / f"mnist-ray-{os.getuid()}" / "sessions"


@contextlib.contextmanager
def recorded(session_dir: str) -> Iterator[None]:
    """This driver's record for the block: written on entry, removed on the way out."""
    pid = os.getpid()
    path = FOLDER / f"{pid}.json"
    try:
        FOLDER.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "start": started(pid), "session": session_dir}))
        os.replace(tmp, path)
    except OSError:  # a record is a courtesy to the next command, never a reason to fail
        path = None
    try:
        yield
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def _holding(session_dir: str) -> dict[int, str]:
    """This user's processes with a file open under `session_dir`: {pid: name}."""
    inside, uid, found = session_dir.rstrip("/") + "/", os.getuid(), {}
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        try:
            if pid == os.getpid() or entry.stat().st_uid != uid:
                continue
            links = (os.readlink(fd) for fd in (entry / "fd").iterdir())
            if any(link.startswith(inside) for link in links):
                name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                found[pid] = name or (entry / "comm").read_text().strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def end_leftovers(log: Callable[[str], None]) -> int:
    """End what killed mnist-ray drivers of this user left running; how many processes."""
    try:
        records = list(FOLDER.glob("*.json"))
    except OSError:
        return 0
    ended = 0
    for path in records:
        try:
            rec = json.loads(path.read_text())
            pid, start, session = int(rec["pid"]), rec["start"], str(rec["session"])
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()  # unreadable: nothing it names can be trusted to end
            continue
        if start is not None and started(pid) == start:
            continue  # its driver still runs: its Ray is in use
        left = _holding(session) if session.startswith("/") else {}
        for p in left:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(OSError):
            path.unlink()
        if left:
            names = ", ".join(sorted(set(left.values())))
            log(
                f"Ended {len(left)} Ray process(es) ({names}) left by mnist-ray pid {pid}, "
                "whose driver is gone"
            )
        ended += len(left)
    return ended

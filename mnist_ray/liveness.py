"""Whether a `running` run is still being run: its driver's heartbeat file.

    from mnist_ray import liveness
    with liveness.Heartbeat(store, run_id):   # drivers/<run_id>.json, rewritten every 5 s
        ...                                   # train; the file goes when the block ends
    dead = liveness.stopped(store, ["run-..."])  # the running runs nobody runs any more

The driver of `submit train` writes `<store>/drivers/<run_id>.json` (host, pid, the pid's
start time, the heartbeat time) before the run's `running` row, and rewrites it every
HEARTBEAT seconds from a daemon thread until the run's final row is written. A driver
killed without a word (SIGKILL, out of memory, its machine gone) leaves a `running` row
behind; readers take such a run as `interrupted` when

- its driver file is missing, or
- the file names this host and its pid is gone (or is another process now), or
- its heartbeat is older than STALE seconds (a driver on another host, or a stuck one).

The heartbeat time is the driver host's clock: hosts that share a store need clocks that
agree to well within STALE.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from datetime import datetime

from mnist_ray import checkpoints
from mnist_ray.config import check_id
from mnist_ray.store import Store, StoreError, now

HEARTBEAT = 5.0  # seconds between rewrites of the driver file
STALE = 30.0  # a heartbeat older than this: the driver is gone
FOLDER = "drivers"


def relpath(run_id: str) -> str:
    return f"{FOLDER}/{check_id(run_id)}.json"


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command's name (Linux): state first, then the
    parent's pid, ...; None once the process is gone (or where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    fields = proc_stat(pid)
    return None if not fields or fields[0] == "Z" else fields[19]  # a zombie has ended


class Heartbeat:
    """The driver's side: the file written on entry, rewritten every HEARTBEAT seconds,
    deleted on exit (after the run's final row: a reader never sees neither)."""

    def __init__(self, store: Store, run_id: str, every: float = HEARTBEAT):
        self.store, self.run_id, self.every = store, run_id, every
        self.record = {"host": socket.gethostname(), "pid": os.getpid()}
        self.record["started"] = started(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def write(self) -> None:
        data = json.dumps(self.record | {"heartbeat": now().isoformat()}).encode()
        self.store.write_bytes(relpath(self.run_id), data)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(StoreError):  # a missed beat is caught up by the next
                self.write()

    def __enter__(self) -> Heartbeat:
        self.write()  # before the running row, so that row never stands without it
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, FileNotFoundError):
            self.store.fs.delete_file(self.store.path(relpath(self.run_id)))


def alive(record: dict | None, at: datetime | None = None) -> bool:
    """The rule above, for one driver file's record (None: no file)."""
    if record is None:
        return False
    try:
        age = ((at or now()) - datetime.fromisoformat(record["heartbeat"])).total_seconds()
        if age > STALE:
            return False
        if record.get("host") == socket.gethostname():
            alive_since = started(int(record["pid"]))
            return alive_since is not None and alive_since == record.get("started", alive_since)
    except (KeyError, TypeError, ValueError):
        return False  # a file that is not a driver record keeps no run alive
    return True


def stopped(store: Store, running: list[str]) -> list[str]:
    """The run ids among `running` (runs whose newest row says running) that nothing runs."""
    if not running:
        return []
    files = set(store.list(FOLDER, ".json"))
    dead = []
    for run_id in running:
        record = None
        if relpath(run_id) in files:
            try:
                record = json.loads(store.read_bytes(relpath(run_id)))
            except (StoreError, ValueError):
                record = None  # deleted a moment ago (the run ended) or unreadable
        if not alive(record):
            dead.append(run_id)
    return dead


def settle(con, store: Store) -> None:
    """The `runs` table of a DuckDB connection (query.py) as the runs stand now: a running
    run that nothing runs is interrupted, and a run that is not finished gets its newest
    checkpoint's epoch in `checkpoint_epoch` (null when it has none, and for finished runs)."""

    def ids(condition: str) -> list[str]:
        sql = f"SELECT run_id FROM runs WHERE {condition}"
        return [r[0] for r in con.execute(sql).fetchall()]

    if dead := stopped(store, ids("status = 'running'")):
        con.execute("UPDATE runs SET status = 'interrupted' WHERE list_contains(?, run_id)", [dead])
    con.execute("ALTER TABLE runs ADD COLUMN checkpoint_epoch INTEGER")
    for run_id, epoch in checkpoints.newest_epochs(store, ids("status <> 'finished'")).items():
        con.execute("UPDATE runs SET checkpoint_epoch = ? WHERE run_id = ?", [epoch, run_id])

"""The kill matrix: something dies at some moment of `submit train`, and the run still ends
bit-identical, stored once, with nothing half-written and nothing left running.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m tests.killmatrix --seed 7 --cases 24
    python -m tests.killmatrix --seed 7 --case 5      # case 5 of seed 7, alone

A seeded plan draws cases, each (what dies) x (when). What: the driver by SIGKILL
(`driver-kill`); the driver's process group by SIGINT, as a terminal's Ctrl-C
(`driver-int`); the training worker (`worker`, Ray retries it); the raylet of the embedded
Ray (`raylet`); the whole head of a `ray start --head` cluster, which is then started again
on the same port (`head`); a Jobs API job, by `mnist-ray jobs stop` (`job-stop`). When:
while Ray starts (`start`), halfway through the second epoch (`epoch`), while a
checkpoint is being written (`checkpoint`), between the last epoch and the run row
(`row`). The moments are holds (tests/faults.py): the process that reaches one waits there
until the kill has landed; the package has no switch for any of it.

Every case ends with the run finished, by Ray's retry or by `mnist-ray submit train
--resume RUN` in the mode of the first command, and then checks: the weights equal an
uninterrupted run's (the tensors' sha256; the file's own hash differs, it holds the run
id); one row for the run, read back by pyarrow, `results --json`, `query` and DuckDB; no
checkpoint or temporary file left where a reader sees it; no process of the case left (the
command's process group, everything below it and everything naming its Ray temp dir: gone
and reaped; the harness is their subreaper).

tests/test_kill_matrix.py runs a dozen cases per CI run; by hand, run as many as you like.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # as a script: conftest and faults beside this file
    sys.path.insert(0, str(TESTS))

import faults  # noqa: E402
from conftest import (  # noqa: E402
    REPO,
    SHARED_DATA,
    VENV_BIN,
    http_json,
    node_ports,
    wait_until,
)

from mnist_ray.liveness import proc_stat  # noqa: E402

WHATS = ("driver-kill", "driver-int", "worker", "raylet", "head", "job-stop")
WHENS = ("start", "epoch", "checkpoint", "row")
# By the row, the training worker has ended and the embedded Ray with it (the row is
# written after the driver has left Ray).
NOT_A_CASE = {("worker", "row"), ("raylet", "row")}
TRAIN = ["--epochs", "3", "--checkpoint-every", "0", "--cpus", "1", "--gpus", "0"]
RUN_ID = re.compile(r"as run (run-\d{8}-\d{6}-[0-9a-f]{6})")
JOB_ID = re.compile(r"raysubmit_\w+")
STEP = 60.0  # the bound of a wait for one thing that should come soon
COMMAND = 300.0  # the bound of one `submit train` on a loaded machine
LINGER = 120.0  # the bound for what a killed command leaves to end by itself


@dataclass(frozen=True)
class Case:
    index: int
    what: str
    when: str

    @property
    def mode(self) -> str:
        """How the command reaches Ray: its own embedded Ray, a head's GCS, the Jobs API."""
        return {"head": "address", "job-stop": "jobs"}.get(self.what, "embedded")

    @property
    def hold(self) -> str | None:
        """The hold point (tests/faults.py) where the kill lands; None: an embedded start,
        caught when its raylet appears."""
        if self.when == "start" and self.mode == "embedded" and self.what != "worker":
            return None
        return self.when

    def __str__(self) -> str:
        return f"case {self.index}: {self.what} at {self.when}"


def plan(seed: int) -> Iterator[Case]:
    """The cases of a seed, endless; each round of six kills every `what` once."""
    rng = random.Random(seed)
    for index in itertools.count(0, len(WHATS)):
        whats = list(WHATS)
        rng.shuffle(whats)
        for offset, what in enumerate(whats):
            when = rng.choice([w for w in WHENS if (what, w) not in NOT_A_CASE])
            yield Case(index + offset, what, when)


def cases(seed: int, count: int) -> list[Case]:
    return list(itertools.islice(plan(seed), count))


def case(seed: int, index: int) -> Case:
    return cases(seed, index + 1)[index]


# ---- processes --------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int, str]:
    """(state, parent, process group, start time), or ("", 0, 0, "") once gone."""
    fields = proc_stat(pid)
    return (fields[0], int(fields[1]), int(fields[2]), fields[19]) if fields else ("", 0, 0, "")


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def subreaper(on: bool) -> None:
    """Orphans of this process's descendants come here (to be reaped), not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap() -> None:
    """Collect every exited child of this process (the subreaper's orphans among them)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Command:
    """`mnist-ray ARGS` in a process group of its own, its stderr read as it comes, and
    every process below it, in its group or naming `marker`, recorded while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], marker: str):
        self.args = args
        self.proc = subprocess.Popen(
            [f"{VENV_BIN}/mnist-ray", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # as a shell runs a job: Ctrl-C goes to the whole group
            # and as a terminal's foreground job, with Ctrl-C's default disposition: a
            # harness started in the background (`cmd &`) has SIGINT ignored, and passes
            # that on, which would make every Ctrl-C case a no-op
            preexec_fn=_sigint_default,
        )
        self.pid = self.proc.pid
        self.marker = marker
        self.out: list[str] = []
        self.err: list[str] = []
        self.seen: dict[int, tuple[str, str]] = {}  # pid -> (start time, command line)
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def _watch(self) -> None:
        while True:
            running = self.proc.poll() is None  # one more look after it has exited
            self._look()
            if not running:
                return
            time.sleep(0.1)

    def _look(self) -> None:
        stats = {int(e.name): _stat(int(e.name)) for e in Path("/proc").glob("[0-9]*")}
        below = {self.pid}
        while grown := {p for p, s in stats.items() if s[1] in below} - below:
            below |= grown
        below |= {p for p, s in stats.items() if s[2] == self.pid}
        if self.marker:
            below |= {p for p in stats if self.marker in _cmdline(p)}
        for pid in below - {self.pid, os.getpid()}:
            if pid not in self.seen and stats[pid][3]:
                self.seen[pid] = (stats[pid][3], _cmdline(pid))

    def save(self, path: Path) -> None:
        """Its stdout and stderr so far, for a look after a failure."""
        path.write_text(
            "\n".join([f"$ mnist-ray {' '.join(self.args)}", *self.out, "--", *self.err])
        )

    def wait(self, timeout: float = COMMAND) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`mnist-ray {' '.join(self.args)}` still running after {timeout:.0f} s:\n"
                + self.said()
            ) from None
        for thread in self._threads:
            thread.join(timeout=10)
        return code

    def said(self, lines: int = 25) -> str:
        return "\n".join(self.err[-lines:])

    def text(self) -> str:
        return "\n".join(self.err)

    def run_id(self) -> str | None:
        found = RUN_ID.search(self.text())
        return found.group(1) if found else None

    def live(self) -> dict[int, str]:
        """Recorded processes still there: same pid and start time, a zombie included (the
        harness reaps its own; a zombie left is a process nobody waited for)."""
        left = {}
        for pid, (started, title) in list(self.seen.items()):
            state, _, _, now = _stat(pid)
            if now == started and state:
                left[pid] = f"{state} {title[:120]}"
        return left

    def raylet(self) -> int | None:
        """The embedded raylet, by its command line now (when first seen, a process may
        not have exec'd yet, and still bear its parent's)."""
        for pid, (started, _) in list(self.seen.items()):
            if "/raylet/raylet" in _cmdline(pid).split(" ")[0] and _stat(pid)[3] == started:
                return pid
        return None

    def end(self) -> None:
        """Whatever a failed case left: the group and what was recorded under it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        reap()


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def until(what: str, check, timeout: float = STEP, cmd: Command | None = None, every=0.05):
    """check() until true, bounded; with cmd, a command that exited first ends the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        if cmd is not None and cmd.proc.poll() is not None:
            if got := check():
                return got
            raise AssertionError(
                f"waiting for {what}: the command exited with {cmd.proc.returncode}:\n" + cmd.said()
            )
        time.sleep(every)
    raise AssertionError(f"waiting for {what}: not after {timeout:.0f} s")


# ---- a `ray start --head` cluster that can be killed and started again on its ports -----------


class Head:
    """One head node (2 CPUs, token auth, loopback), its ports fixed at creation so that a
    new head after a kill listens where the old one did."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.token = root, secrets.token_hex(16)
        self.flags, ports = node_ports(head=True)
        self.gcs = f"127.0.0.1:{ports['port']}"
        self.dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
        self.agent = f"http://127.0.0.1:{ports['dashboard-agent-listen-port']}"
        self.env = {
            **env,
            "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
        }
        self.proc: subprocess.Popen | None = None
        self.temp: Path | None = None
        self.starts = 0

    def start(self, attempts: int = 2) -> None:
        for attempt in range(1, attempts + 1):
            self.starts += 1
            self.temp = Path(tempfile.mkdtemp(prefix=f"kmh{self.starts}-", dir="/tmp"))
            log = open(self.root / f"head-{self.starts}.log", "wb")  # noqa: SIM115 - the head's
            self.proc = subprocess.Popen(
                [f"{VENV_BIN}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
                + self.flags
                + [f"--temp-dir={self.temp}", "--include-dashboard=true"]
                + ["--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0"]
                + ["--object-store-memory=300000000"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.temp,
            )
            log.close()
            try:
                wait_until(
                    "the head's Jobs API",
                    lambda: http_json(f"{self.dashboard}/api/version", self.token),
                    timeout=120,
                    proc=self.proc,
                )
                wait_until(
                    "the head's raylet",
                    lambda: urllib.request.urlopen(
                        f"{self.agent}/api/local_raylet_healthz", timeout=5
                    ),
                    timeout=120,
                    proc=self.proc,
                )
                return
            except Exception:
                self.kill()
                if attempt == attempts:
                    raise

    def processes(self) -> list[int]:
        """Every process of this head: its group, or naming its temp dir (workers)."""
        if self.proc is None:
            return []
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            pid = int(entry.name)
            state, _, group, _ = _stat(pid)
            if state and (group == self.proc.pid or str(self.temp) in _cmdline(pid)):
                found.append(pid)
        return found

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The whole head at once, as a machine that dies; returns when all of it is gone."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reap()
            if not [p for p in self.processes() if _stat(p)[0] != "Z"]:
                break
            time.sleep(0.1)
        shutil.rmtree(self.temp, ignore_errors=True)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


# ---- the matrix -------------------------------------------------------------------------------


def tensors_sha256(path: Path) -> str:
    """The weights' own hash: names, dtypes, shapes and bytes, not the file's metadata."""
    from safetensors.numpy import load

    digest = hashlib.sha256()
    for name, array in sorted(load(path.read_bytes()).items()):
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class Matrix:
    """One session of cases: a work folder, the holds folder, the uninterrupted run's
    weights, and a head shared by the cases that need one (started on first use)."""

    def __init__(self, work: Path | None = None, log=print):
        self.work = work or Path(tempfile.mkdtemp(prefix="km-", dir="/tmp"))
        self.holds = self.work / "holds"
        self.holds.mkdir(parents=True, exist_ok=True)
        self.site = faults.sitecustomize(self.work / "site")
        self.log = log
        self._reference: str | None = None
        self._head: Head | None = None
        data = os.environ.get("MNIST_RAY_DATA") or str(SHARED_DATA)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON"))}
        base.update(
            PYTHONPATH=f"{self.site}{os.pathsep}{REPO}",
            MNIST_RAY_DATA=data,
            RAY_USAGE_STATS_ENABLED="0",
            MNIST_RAY_TEST_HOLDS=str(self.holds),
        )
        self.base = base

    # -- set-up --------------------------------------------------------------------------------
    def env(self, folder: Path, mode: str) -> dict[str, str]:
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {**self.base, "HOME": str(home)}
        if mode == "embedded":  # a temp dir of its own: its own start lock, its processes named
            short = Path(tempfile.mkdtemp(prefix="kmc-", dir="/tmp"))
            env.update(RAY_TMPDIR=str(short), TMPDIR=str(short))
        else:
            env["RAY_AUTH_TOKEN"] = self.head.token
        return env

    @property
    def head(self) -> Head:
        if self._head is None:
            if shutil.which("ray", path=VENV_BIN) is None:
                raise AssertionError(f"no `ray` command beside {sys.executable}: ray[default]")
            (self.work / "head").mkdir(exist_ok=True)
            self._head = Head(self.work / "head", self.base)
            self._head.start()
        return self._head

    def address(self, mode: str) -> list[str]:
        if mode == "address":
            return ["--address", self.head.gcs]
        if mode == "jobs":
            return ["--address", self.head.dashboard]
        return []

    def reference(self) -> str:
        """The uninterrupted run's tensors' sha256, trained once per session."""
        if self._reference is None:
            folder = self.work / "reference"
            store = folder / "store"
            cmd = Command(
                ["submit", "train", *TRAIN, "--store", str(store)], self.env(folder, "embedded"), ""
            )
            code = cmd.wait()
            assert code == 0, cmd.said()
            run_id = cmd.run_id()
            self._reference = tensors_sha256(store / "weights" / f"{run_id}.safetensors")
            self.log(f"uninterrupted run {run_id}: weights sha256 {self._reference[:16]}")
        return self._reference

    def close(self, keep: bool = False) -> None:
        """Stop the head; delete the work folder unless `keep` (to look at a failure)."""
        if self._head is not None:
            self._head.stop()
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- a case --------------------------------------------------------------------------------
    def run(self, case: Case) -> str:
        """Run one case; raises AssertionError saying what went wrong. Returns how it ended."""
        reference = self.reference()
        folder = self.work / f"case-{case.index}"
        shutil.rmtree(folder, ignore_errors=True)
        store = folder / "store"
        for stale in self.holds.iterdir():
            stale.unlink()
        if case.hold:
            (self.holds / f"hold-{case.hold}").touch()
        env = self.env(folder, case.mode)
        marker = env.get("RAY_TMPDIR", "")
        at = self.address(case.mode)
        cmds = [Command(["submit", "train", *TRAIN, *at, "--store", str(store)], env, marker)]
        subreaper(True)
        try:
            first = cmds[0]
            self._strike(case, first, at, env)
            (self.holds / "release").touch()  # whatever still holds goes on
            code = first.wait()
            run_id = first.run_id()
            assert run_id, f"no run id on stderr (exit {code}):\n{first.said()}"
            self._expect_exit(case, first, code, run_id)
            if case.mode == "jobs":
                self._job_over(first, env)
            if case.what == "head":
                self.head.start()  # a new head on the same ports
            ended = "by itself"
            if self._status(store, env, run_id) != "finished":
                again = Command(
                    ["submit", "train", "--resume", run_id, *at, "--store", str(store)], env, marker
                )
                cmds.append(again)
                code = again.wait()
                assert code == 0, f"--resume {run_id} exited {code}:\n{again.said()}"
                ended = "by --resume"
            row = self._check(store, env, run_id, reference, cmds)
            if case.what == "worker":  # the kill landed: Ray ran the task again
                assert row["attempts"] >= 2, f"attempts {row['attempts']}: no retry happened"
            return ended
        finally:
            for n, cmd in enumerate(cmds):
                cmd.end()
                cmd.save(folder / f"command-{n}.log")
            subreaper(False)
            (self.holds / "release").touch()
            if marker:
                shutil.rmtree(marker, ignore_errors=True)

    def _strike(self, case: Case, cmd: Command, at: list[str], env: dict[str, str]) -> None:
        """Wait for the case's moment, then kill its `what`."""
        reached = self.holds / f"reached-{case.hold}"
        if case.hold is None:  # an embedded start: the raylet is up, the node not yet ready
            until("the embedded raylet", cmd.raylet, COMMAND, cmd, every=0.02)
        else:
            until(f"the hold {case.hold}", reached.exists, COMMAND, cmd)
        if case.when == "epoch":
            until("Epoch: 0001 on stderr", lambda: "Epoch: 0001" in cmd.text(), STEP, cmd)
        if case.what == "driver-kill":
            os.kill(cmd.pid, signal.SIGKILL)
        elif case.what == "driver-int":
            os.killpg(cmd.pid, signal.SIGINT)
        elif case.what == "worker":
            os.kill(int(reached.read_text()), signal.SIGKILL)
        elif case.what == "raylet":
            raylet = until("the embedded raylet", cmd.raylet, STEP, cmd)
            os.kill(raylet, signal.SIGKILL)
        elif case.what == "head":
            self.head.kill()
        elif case.what == "job-stop":
            job = until("the job id", lambda: JOB_ID.search(cmd.text()), STEP, cmd).group(0)
            stop = _mnist_ray(["jobs", "stop", job, *at], env)
            assert stop.returncode == 0, stop.stderr

    def _expect_exit(self, case: Case, cmd: Command, code: int, run_id: str) -> None:
        said = cmd.said()
        if case.what == "worker":
            assert code == 0, f"Ray's retry did not finish the run (exit {code}):\n{said}"
        if case.what == "driver-int":  # held at the moment, the run can't have finished
            assert code == 130, f"Ctrl-C: exit {code}:\n{said}"
            resume = f"mnist-ray submit train --resume {run_id}"
            assert resume in cmd.text(), f"Ctrl-C: stderr does not say {resume!r}:\n{said}"
        assert "Traceback" not in cmd.text(), said

    def _job_over(self, cmd: Command, env: dict[str, str]) -> None:
        job = JOB_ID.search(cmd.text()).group(0)

        def over():
            got = _mnist_ray(["jobs", "status", job, *self.address("jobs")], env)
            return not re.search(r": (PENDING|RUNNING)", got.stdout)

        until(f"job {job} over", over, STEP, every=1)

    def _status(self, store: Path, env: dict[str, str], run_id: str) -> str | None:
        got = _mnist_ray(["results", "--json", "--store", str(store)], env)
        assert got.returncode == 0, got.stderr
        rows = [r for r in json.loads(got.stdout)["runs"] if r["run_id"] == run_id]
        assert len(rows) == 1, f"after the kill, results lists {len(rows)} rows of {run_id}"
        return rows[0].get("status") or "finished"

    def _check(self, store: Path, env, run_id: str, reference: str, cmds: list[Command]) -> dict:
        import duckdb
        import pyarrow.dataset as ds

        table = ds.dataset(store / "runs", format="parquet").to_table().to_pylist()
        assert [r["run_id"] for r in table] == [run_id], f"pyarrow reads {len(table)} rows"
        (row,) = table
        assert row.get("status") in (None, "finished"), row.get("status")
        got = _mnist_ray(["results", "--json", "--store", str(store)], env)
        runs = json.loads(got.stdout)["runs"]
        assert [r["run_id"] for r in runs] == [run_id], runs
        assert runs[0].get("status") in (None, "finished"), runs[0]
        counted = _mnist_ray(
            ["query", "select count(*) as n from runs", "--json", "--store", str(store)], env
        )
        assert json.loads(counted.stdout) == [{"n": 1}], counted.stdout + counted.stderr
        glob = f"{store}/runs/*.parquet"
        ((n,),) = (
            duckdb.connect().execute(f"select count(*) from read_parquet('{glob}')").fetchall()
        )
        assert n == 1, f"DuckDB reads {n} rows from {glob}"

        weights = store / "weights" / f"{run_id}.safetensors"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == row["weights_sha256"]
        sha = tensors_sha256(weights)
        assert sha == reference, f"weights sha256 {sha[:16]} != uninterrupted {reference[:16]}"
        onnx = store / "weights" / f"{run_id}.onnx"  # the export the shards score with
        assert hashlib.sha256(onnx.read_bytes()).hexdigest() == row["onnx_sha256"]
        # what a reader sees: the row, the weights and their export; no checkpoint, driver
        # file or temporary file (those live under '.' names until moved into place)
        visible = sorted(
            str(p.relative_to(store))
            for p in store.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(store).parts)
        )
        expected = [f"runs/{run_id}.parquet", f"weights/{run_id}.onnx"]
        expected.append(f"weights/{run_id}.safetensors")
        assert visible == expected, f"the store holds {visible}, expected {expected}"

        # The raylet's agents outlive a SIGKILLed driver's raylet until they notice (Ray
        # checks the parent five times, then reports to the GCS, which is gone too): on a
        # loaded machine that took over 30 s, so they are given LINGER.
        for cmd in cmds:
            with contextlib.suppress(AssertionError):
                until("the case's processes gone", lambda c=cmd: (reap(), not c.live())[1], LINGER)
            assert not cmd.live(), f"left running after `{cmd.args[:3]}`: {cmd.live()}"
        return row


def _mnist_ray(args: list[str], env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        [f"{VENV_BIN}/mnist-ray", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


# ---- the script -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.killmatrix", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seed", type=int, default=None, help="the plan's seed (default: random)")
    parser.add_argument("--cases", type=int, default=12, help="how many cases, from case 0")
    parser.add_argument("--case", type=int, default=None, help="run this case alone")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    todo = [case(seed, args.case)] if args.case is not None else cases(seed, args.cases)
    print(f"kill matrix: seed {seed}, {len(todo)} case(s)", flush=True)
    matrix = Matrix()
    failed = []
    try:
        for c in todo:
            started = time.monotonic()
            print(f"{c} ...", flush=True)
            try:
                ended = matrix.run(c)
            except Exception as exc:  # a failure is reported and the matrix goes on
                failed.append(c)
                print(f"FAIL {c} ({time.monotonic() - started:.0f} s): {exc}", flush=True)
                continue
            print(f"ok   {c}: finished {ended} ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        matrix.close(keep=bool(failed))
    if failed:
        print(f"the failed cases' commands and store: {matrix.work}/case-K/")
    print(f"kill matrix: seed {seed}: {len(todo) - len(failed)} passed, {len(failed)} failed")
    for c in failed:
        print(f"  rerun: python -m tests.killmatrix --seed {seed} --case {c.index}  # {c}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Connecting to Ray: the version floor, and Ctrl-C during an embedded start leaving nothing.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_session.py -q

The Ctrl-C cases run `mnist-ray submit train` as a terminal does, in a process group of its
own, and send SIGINT to the group at one moment of the start, chosen by waiting for it to
happen. Every process below the command is recorded while it runs (its Ray's processes
stay below it: the command adopts their orphans), as is every process naming the run's
own Ray temp dir; none may be running once the command has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN, _signal_group, client_env, wait_until
from packaging.requirements import Requirement

from mnist_ray.errors import ClusterError
from mnist_ray.liveness import proc_stat
from mnist_ray.session import MIN_RAY, check_ray_version

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process

# ---- the version floor ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.40.0", "2.51.2", "1.13.0", "0.8"])
def test_a_ray_without_token_auth_is_refused_in_one_line(version):
    with pytest.raises(ClusterError) as refused:
        check_ray_version(version)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"Ray {version} is too old: mnist-ray needs Ray >= 2.52")
    assert "pip install -U 'ray[default]>=2.52'" in message


@pytest.mark.parametrize("version", ["2.52.0", "2.60.0", "2.100.1", "3.0.0.dev0"])
def test_the_floor_and_newer_are_accepted(version):
    check_ray_version(version)


def test_the_floor_is_the_one_pyproject_declares():
    import ray

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (ray_req,) = [Requirement(d) for d in project["dependencies"] if d.startswith("ray")]
    (spec,) = ray_req.specifier
    assert (spec.operator, spec.version) == (">=", ".".join(map(str, MIN_RAY)))
    check_ray_version(ray.__version__)  # the Ray installed here is accepted


# ---- an embedded Ray ends whole, and only itself ----------------------------------------------

ENDS_ONLY_ITSELF = """
import json, os, subprocess, sys
from mnist_ray.session import _ray_below, connect

me = os.getpid()
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "/ray/"])
with connect(None, log=lambda line: None):
    ours = _ray_below(me, {other.pid})  # the GCS, the raylet, its agents and workers ...
left = [pid for pid in ours if os.path.exists(f"/proc/{pid}")]
print(json.dumps({"ours": len(ours), "left": left, "other_alive": other.poll() is None}))
other.kill()
"""


def test_an_embedded_ray_in_a_process_ends_whole_and_spares_another_ray_there(tmp_path):
    """As in a notebook or a test that already runs a Ray of its own (a Cluster, `ray start`):
    leaving the block ends every process of the embedded Ray, and nothing else."""
    got = subprocess.run(
        [sys.executable, "-c", ENDS_ONLY_ITSELF],
        env=client_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    said = json.loads(got.stdout.strip().splitlines()[-1])
    assert said["ours"] >= 3, said
    assert said["left"] == [], said  # gone, not even a zombie: end_children reaps its own
    assert said["other_alive"], said


# ---- Ctrl-C during an embedded start ----------------------------------------------------------

FORK_CTRL_C = """
import contextlib, os, signal, sys, time
armed = []

def ctrl_c_in_a_fork_callback():  # as when Ctrl-C lands while logging's fork callback runs
    if armed:
        armed.clear()
        os.kill(os.getpid(), signal.SIGINT)

os.register_at_fork(after_in_parent=ctrl_c_in_a_fork_callback)
from mnist_ray.session import _ctrl_c

try:
    with _ctrl_c(wait=False) if sys.argv[1] == "guarded" else contextlib.nullcontext():
        armed.append(True)
        pid = os.fork()  # as ray.init does, starting Ray's processes
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the rest of the start, which Ctrl-C should end
            time.sleep(0.01)
    print("ran on")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_ctrl_c_python_would_drop_during_a_fork_still_interrupts_the_start(tmp_path):
    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", FORK_CTRL_C, mode],
            env=client_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )

    plain = run("plain")  # Python alone: the KeyboardInterrupt is printed and dropped
    assert plain.stdout.strip() == "ran on" and "Exception ignored" in plain.stderr
    guarded = run("guarded")
    assert guarded.stdout.strip() == "interrupted", guarded.stderr
    assert "Exception ignored" not in guarded.stderr


AWAKE = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray's, with no task


def _stat(pid: int) -> tuple[str, int, str]:
    """(state, parent pid, start time) of a process, or ("", 0, "") once it is gone."""
    fields = proc_stat(pid)
    return (fields[0], int(fields[1]), fields[19]) if fields else ("", 0, "")


class Command:
    """`mnist-ray ARGS` in its own process group, its stderr read as it comes, and every
    process below it, or naming `marker` on its command line, recorded while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], marker: str):
        self.proc = subprocess.Popen(
            [f"{VENV_BIN}/mnist-ray", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # as a shell runs a job: Ctrl-C goes to the whole group
        )
        self.marker = marker.encode()
        self.err: list[str] = []
        self.seen: dict[int, tuple[str, str]] = {}  # pid -> (start time, title first seen)
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def _watch(self) -> None:
        while True:
            running = self.proc.poll() is None  # one more look after it has exited
            stats, titles = {}, {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and int(entry.name) != os.getpid():
                    pid = int(entry.name)
                    stats[pid] = _stat(pid)
                    with contextlib.suppress(OSError):
                        titles[pid] = (entry / "cmdline").read_bytes()
            below = {self.proc.pid}
            while grown := {p for p, s in stats.items() if s[1] in below} - below:
                below |= grown
            below |= {p for p, title in titles.items() if self.marker in title}
            for pid in below - {self.proc.pid}:
                if pid not in self.seen and stats[pid][2]:
                    title = titles.get(pid, b"").split(b"\0")[0].decode(errors="replace")
                    self.seen[pid] = (stats[pid][2], title)
            if not running:
                return
            time.sleep(0.05)

    def left_running(self) -> dict[int, str]:
        """The recorded processes still alive (same pid and start time, not a zombie)."""
        found = {}
        for pid, (started, title) in list(self.seen.items()):
            state, _, now = _stat(pid)
            if now == started and state not in ("", "Z"):
                found[pid] = title
        return found

    def titles(self) -> list[str]:
        """What the recorded processes call themselves now (Ray's retitle themselves)."""
        found = []
        for pid in list(self.seen):
            with contextlib.suppress(OSError):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        return found

    def ctrl_c(self, timeout: float = 60) -> int:
        _signal_group(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=10)
        return code

    def end(self) -> None:
        """Whatever a failed test left: the command and what was recorded under it."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for pid in self.left_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def short_tmp():
    """Ray's temp dir for one run. Short: Ray's socket paths inside it must fit in 107 bytes."""
    path = tempfile.mkdtemp(prefix="mrs-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


MOMENTS = {
    # its first line: the command has begun (earlier, a Ctrl-C meets Python's own start-up)
    "right away": lambda cmd, tmp: cmd.err,
    "when the session dir appears": lambda cmd, tmp: list((tmp / "ray").glob("session_2*")),
    # the raylet has started its agents and ray.init waits for it to register: Ray's own
    # shutdown does not know this node yet
    "when the raylet's agents appear": lambda cmd, tmp: any(
        "ray::DashboardAgent" in t or "dashboard/agent.py" in t for t in cmd.titles()
    ),
    "when it says Started a local Ray": lambda cmd, tmp: any(
        line.startswith("Started a local Ray") for line in cmd.err
    ),
    "during training": lambda cmd, tmp: any(  # a worker's title names its task
        t.startswith("ray::") and not t.startswith(AWAKE) for t in cmd.titles()
    ),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_during_an_embedded_start_leaves_no_ray_process(
    moment, mnist_data, short_tmp, tmp_path
):
    # TMPDIR: a start lock of its own, so that the start does not wait for other commands'
    env = client_env(
        tmp_path, MNIST_RAY_DATA=str(mnist_data), RAY_TMPDIR=str(short_tmp), TMPDIR=str(short_tmp)
    )
    args = ["submit", "train", "--epochs", "1", "--store", str(tmp_path / "store")]
    cmd = Command(args, env, marker=str(short_tmp))
    try:
        wait_until(moment, lambda: MOMENTS[moment](cmd, short_tmp), 180, 0.02, cmd.proc)
        finished = any(line.startswith("Epoch: 0001") for line in cmd.err)
        code = cmd.ctrl_c()
        said = "\n".join(cmd.err[-20:])
        assert code == 130 or (code == 0 and finished), said
        assert cmd.err[-1].startswith("interrupted"), said
        if moment not in ("right away", "when the session dir appears"):
            assert len(cmd.seen) >= 3, cmd.seen  # the GCS, the raylet, the agents at least
        with contextlib.suppress(TimeoutError):
            wait_until("Ray's processes gone", lambda: not cmd.left_running(), 10, 0.1)
        assert cmd.left_running() == {}, said
    finally:
        cmd.end()

"""Shared fixtures: the MNIST files, one local Ray for the session, a trained run.

Tests read MNIST from $MNIST_RAY_DATA, else from ../shared/datasets beside the repo
(the build machines have no internet), else from mnist-ray's own default folder; where
the files are missing, the data fixtures download them through torchvision, as the job
does. Expected numbers come from tests/reference.py: the classic tutorial program and what
it printed (docs/reference.md).

The cluster side adds a multi-node Ray cluster started with `ray start` (ray_cli_cluster)
and moto's S3 server (s3_server). The cluster binds 127.0.0.1 only, on ports chosen free at
start, with its own temp dir and HOME, so it never meets another Ray on the machine;
teardown ends exactly the processes it started (their process groups, then anything still
naming its temp dir).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from reference import TUTORIAL_COSTS  # noqa: F401 - the classic program's costs, for the tests

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "datasets"
if not os.environ.get("MNIST_RAY_DATA") and (SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["MNIST_RAY_DATA"] = str(SHARED_DATA)


# ---- lanes: `pytest -m unit` starts no Ray and no CLI subprocess ------------------------------
# Every test is in one lane. A test marked cluster, slow, container, browser or gpu (by
# itself, its module's pytestmark, or a fixture below) is in that lane; every other test is
# `unit`, and the guard below fails a unit test that starts Ray or the CLI in a process.
LANES = ("cluster", "slow", "container", "browser", "gpu")
LANE_FIXTURES = {  # a test that uses one of these is in its lane
    "ray_local": "cluster",
    "ray_cli_cluster": "cluster",
    "s3_server": "cluster",
    "browser": "browser",
}


def pytest_collection_modifyitems(config, items):
    """Each test's lane; tests marked gpu run only where torch sees CUDA."""
    for item in items:
        if not any(lane in item.keywords for lane in LANES):
            fixtures = set(getattr(item, "fixturenames", ()))
            lane = next((v for k, v in LANE_FIXTURES.items() if k in fixtures), "unit")
            item.add_marker(getattr(pytest.mark, lane))
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in gpu_tests:
            item.add_marker(skip)


# What a unit test may not start: Ray's own programs (ray.init spawns them) and the CLI.
_NOT_IN_UNIT = re.compile(r"(^|/)(mnist-ray|ray|gcs_server|raylet)$|/ray/")
_CLI_CODE = r"-m mnist_ray|mnist_ray\.cli"  # the CLI run as `python -m` or `python -c`


@pytest.fixture(autouse=True)
def _lane_guard(request, monkeypatch):
    """In the unit lane, starting Ray or the CLI in a process fails the test, naming it."""
    if request.node.get_closest_marker("unit") is None:
        _OTHER_RAN[0] = True
        yield
        return
    if not _OTHER_RAN[0] and _ray_running():  # only a unit test's fixture can have started it
        sys.modules["ray"].shutdown()  # once: the tests after it are not blamed for it
        pytest.fail("a fixture of this unit test started Ray: mark it cluster", pytrace=False)
    started = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        words = [str(a) for a in ([args] if isinstance(args, str | os.PathLike) else args)]
        joined = " ".join(words)
        if any(_NOT_IN_UNIT.search(w) for w in words[:3]) or re.search(_CLI_CODE, joined):
            pytest.fail(
                f"a unit test started {' '.join(words)[:120]!r}: mark it cluster "
                "(tests/conftest.py, LANES)",
                pytrace=False,
            )
        started(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    _UNIT_NOW[0] = True
    try:
        yield
    finally:
        _UNIT_NOW[0] = False


_UNIT_NOW = [False]  # inside a unit test: ensure_ray refuses
_OTHER_RAN = [False]  # a test of another lane ran in this session (and may have started Ray)


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.fixture(scope="session")
def mnist_train():
    """The checked training arrays; torchvision downloads the files when they are missing."""
    from mnist_ray.data import load

    return load("mnist", "train")


@pytest.fixture(scope="session")
def mnist_test():
    from mnist_ray.data import load

    return load("mnist", "test")


@pytest.fixture(scope="session")
def data_dir(mnist_train, mnist_test) -> Path:
    """The folder holding MNIST/raw/ with its four files (the two fixtures above made sure)."""
    from mnist_ray.data import data_root

    return data_root().resolve()


@pytest.fixture(scope="session")
def tutorial_run(mnist_train):
    """mnist-ray's training with the tutorial's settings, on the CPU: a TrainResult."""
    import torch

    from mnist_ray.config import TrainConfig
    from mnist_ray.train import train

    return train(TrainConfig(), *mnist_train, torch.device("cpu"), log=lambda _: None)


def ensure_ray():
    """One local Ray for the session (2 CPUs, loopback), started on first use and reused;
    a test that needs a cluster of its own shuts it down and the next user starts it again."""
    if _UNIT_NOW[0]:
        pytest.fail("a unit test asked for Ray (ensure_ray): mark it cluster", pytrace=False)
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            address="local",
            _node_ip_address="127.0.0.1",
        )
    return ray


@pytest.fixture
def ray_local():
    return ensure_ray()


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """An IDX file of unsigned bytes: magic (0x0801 labels / 0x0803 images), dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (0x0800 | array.ndim)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())
    return path


def make_dataset(root: Path, n_train: int = 200, n_test: int = 50, folder: str = "FashionMNIST"):
    """Small, valid IDX files under root/<folder>/raw, in torchvision's layout."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return root


# ---- the cluster side -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)  # where `ray` and `mnist-ray` live


@pytest.fixture(scope="session")
def mnist_data(data_dir) -> Path:
    """The MNIST folder for tests that hand it to subprocesses, containers and clusters."""
    return data_dir


def free_ports(n: int, tries: int = 500) -> list[int]:
    """n distinct ports free right now on 127.0.0.1, from 10000-19999: below the kernel's
    ephemeral range (32768 up), where any process's outgoing connection or bind to port 0
    (Ray's make many) can take a port between this choice and its use (seen: a container
    worker's agent port answered by another process's gRPC), and below free_range's."""
    ports: list[int] = []
    for _ in range(tries):
        port = random.randrange(10000, 20000)
        if port not in ports and _bindable(port):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports found in 10000-19999")


def _bindable(port: int) -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def free_range(size: int, tries: int = 50) -> tuple[int, int]:
    """A block of `size` consecutive free ports for Ray's workers."""
    for _ in range(tries):
        start = random.randrange(20000, 30000 - size)
        if start + size > 23000 and start < 24000:  # the Ray client's per-driver servers' ports
            continue
        if all(_bindable(port) for port in range(start, start + size)):
            return start, start + size - 1
    raise RuntimeError(f"no {size} consecutive free ports found")


def node_ports(head: bool) -> tuple[list[str], dict[str, int]]:
    """`ray start` port flags for one node, each port its own."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "runtime-env-agent-port",
        "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port",
        "metrics-export-port",
    ]
    if head:
        names += ["port", "dashboard-port", "ray-client-server-port"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    low, high = free_range(40)
    flags = [f"--{name}={port}" for name, port in ports.items()]
    return flags + [f"--min-worker-port={low}", f"--max-worker-port={high}"], ports


class ProcessExited(RuntimeError):
    pass


def wait_until(what: str, check, timeout: float, every: float = 1.0, proc=None):
    """check() until it returns something true; bounded in time (and so in count).
    With proc, gives up as soon as that process has exited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"{what}: the process exited with {proc.returncode}")
        try:
            got = check()
            if got:
                return got
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(every)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s (last error: {last})")


def http_json(url: str, token: str | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


# ---- running the CLI the way a user does --------------------------------------------------------


def client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The submitting user's environment: no Ray token unless given, no ~/.ray."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def mnist_ray(args: list[str], env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        [f"{VENV_BIN}/mnist-ray", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result, *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@dataclass
class RayCluster:
    """A head and workers started with the `ray` command line; see ray_cli_cluster."""

    temp_dir: Path
    env: dict[str, str]
    token: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    gcs: str = ""
    dashboard: str = ""
    client: str = ""  # ray://HOST:PORT, the head's Ray client server

    def start(self, args: list[str], head: bool, log: Path, attempts: int = 2) -> dict:
        """Start one node and wait until it serves. A loaded machine can make `ray start`
        give up (it allows a raylet 30 s to register): then start it again, once."""
        for attempt in range(1, attempts + 1):
            proc, ports = self._launch(args, head, log)
            try:
                self._wait_ready(proc, ports, head)
                return ports
            except (ProcessExited, TimeoutError):
                _signal_group(proc.pid, signal.SIGKILL)
                if attempt == attempts:
                    raise

    def _launch(self, args: list[str], head: bool, log: Path):
        flags, ports = node_ports(head)
        cmd = [f"{VENV_BIN}/ray", "start", "--block", "--node-ip-address=127.0.0.1", *flags]
        if head:
            cmd += [
                "--head",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
            ]
            self.gcs = f"127.0.0.1:{ports['port']}"
            self.dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
            self.client = f"ray://127.0.0.1:{ports['ray-client-server-port']}"
        else:
            cmd += [f"--address={self.gcs}"]
        out = open(log, "ab")  # noqa: SIM115 - handed to the process, closed with it
        if log not in self.logs:
            self.logs.append(log)
        proc = subprocess.Popen(  # nodes work in their own folder, never the driver's
            cmd + args,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.temp_dir,
        )
        self.procs.append(proc)
        return proc, ports

    def _wait_ready(self, proc: subprocess.Popen, ports: dict, head: bool) -> None:
        if head:
            wait_until(
                "Ray head's Jobs API",
                lambda: http_json(f"{self.dashboard}/api/version", self.token),
                timeout=120,
                proc=proc,
            )
        agent = f"http://127.0.0.1:{ports['dashboard-agent-listen-port']}"
        wait_until(
            "Ray node's raylet",
            lambda: urllib.request.urlopen(f"{agent}/api/local_raylet_healthz", timeout=5),
            timeout=120,
            proc=proc,
        )

    def nodes(self) -> list[dict]:
        """Alive nodes from the state API, each with node_id and resources_total."""
        got = http_json(f"{self.dashboard}/api/v0/nodes?detail=1&limit=100", self.token)
        rows = got["data"]["result"]["result"]
        return [n for n in rows if n["state"] == "ALIVE"]

    def stop(self) -> None:
        """End what this cluster started: SIGTERM its process groups, then SIGKILL stragglers."""
        for p in self.procs:
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            _signal_group(p.pid, signal.SIGKILL)
        for pid in _pids_naming(str(self.temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
            if log.exists()
        )


def _signal_group(pid: int, sig: int) -> None:
    # each `ray start` leads its own session (start_new_session), so this is only ours
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _pids_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1; yields (endpoint URL, the environment that reaches it)."""
    import moto.server as moto_server  # the test extra's moto[server]

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    (port,) = free_ports(1)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
    }
    try:
        yield url, env
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cli_cluster(mnist_data, tmp_path_factory, request):
    """A token-protected two-node cluster: a CPU head and a worker declaring one GPU.

    Yields (cluster, gpu_node_id). The job driver runs on the head with this repository
    on PYTHONPATH, so the cluster runs the code under test; every node reaches the
    s3_server fixture's S3 through the standard AWS_* variables.
    """
    if shutil.which("ray", path=VENV_BIN) is None:
        pytest.fail(f"no `ray` command beside {sys.executable}: reinstall ray[default]")
    s3_env = request.getfixturevalue("s3_server")[1]
    # A short path: Ray's socket names must stay under the 107-byte limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    home = tmp_path_factory.mktemp("home")  # no ~/.ray/auth_token of the machine's user
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(REPO),
        "MNIST_RAY_DATA": str(mnist_data),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        **s3_env,
    }
    env.pop("RAY_ADDRESS", None)
    cluster = RayCluster(temp_dir=temp_dir, env=env, token=token)
    logs = tmp_path_factory.mktemp("ray-logs")
    try:
        common = ["--object-store-memory=300000000"]
        cluster.start([*common, "--num-cpus=1", "--num-gpus=0"], head=True, log=logs / "head.log")
        cluster.start([*common, "--num-cpus=1", "--num-gpus=1"], head=False, log=logs / "gpu.log")
        nodes = wait_until(
            "two alive nodes", lambda: len(cluster.nodes()) == 2 and cluster.nodes(), 60
        )
        (gpu_node,) = [n for n in nodes if n["resources_total"].get("GPU", 0) >= 1]
        yield cluster, gpu_node["node_id"]
    except BaseException:
        print(cluster.tail(), file=sys.stderr)
        raise
    finally:
        cluster.stop()


def run_row(run_id: str, weights_uri: str, weights_sha256: str, **config) -> dict:
    """A run row as `submit train` writes one, for tests that need a run but no training."""
    from mnist_ray.config import TrainConfig
    from mnist_ray.schema import run_row
    from mnist_ray.store import now

    return run_row(
        run_id=run_id,
        created_at=now(),
        **TrainConfig(**{"epochs": 1, **config}).to_dict(),
        device="cpu",
        node_id="n",
        hostname="h",
        gpu_ids=[],
        cuda_graph=False,
        epoch_costs=[1.0],
        train_seconds=1.0,
        attempts=1,
        weights_uri=weights_uri,
        weights_sha256=weights_sha256,
        torch_version="x",
        ray_version="x",
    )


def stored_run(store, *, seed: int = 0, scale: float = 1.0, shape=(10, 784), **config) -> dict:
    """A run in the store with fixed random weights: evaluation needs weights, not training."""
    from mnist_ray.store import new_id

    rng = np.random.default_rng(seed)
    weights = {
        "weight": (rng.standard_normal(shape) * scale).astype(np.float32),
        "bias": (rng.standard_normal(10) * scale).astype(np.float32),
    }
    run_id = new_id("run")
    uri, sha = store.write_weights(run_id, weights)
    row = run_row(run_id, uri, sha, **config)
    store.write_row("runs", row)
    return row


def eval_row(run_id: str = "run-x", accuracy: float = 0.9226) -> dict:
    """An evaluation row as `evaluate` writes one, for store tests."""
    from mnist_ray.schema import evaluation_row
    from mnist_ray.store import new_id, now

    return evaluation_row(
        eval_id=new_id("eval"),
        run_id=run_id,
        created_at=now(),
        dataset="mnist",
        shards=4,
        accuracy=accuracy,
        correct=9226,
        total=10000,
        per_class_accuracy=[0.9] * 10,
        confusion=list(range(100)),
        sample_index=3757,
        sample_label=8,
        sample_prediction=3,
        sample_probabilities=[0.1] * 10,
        sample_pixels=[0] * 784,
        eval_seconds=1.5,
        node_ids=["n1"],
    )

"""Faults injected for real on a real local Ray: killed workers, a lost node, Ctrl-C.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_faults.py -q

One module-scoped `ray.cluster_utils.Cluster` (its own ports, 127.0.0.1 only) serves every
test here: the in-process driver and the `mnist-ray` subprocesses (`--address`) both use it,
so a driver can die without taking the cluster with it. Workers are killed with SIGKILL,
found through the state API (`ray.util.state.list_tasks`); where a task is too short to catch
from outside (a shard takes milliseconds), or a death must land at one exact point (before
the first checkpoint, after the second), the task kills itself on a token file
(tests/faults.py, armed in this driver's workers through Ray's runtime_env): still a real
process death that Ray has to retry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faults
import pyarrow.parquet as pq
import pytest
import ray
from conftest import free_ports, stored_run
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks
from typer.testing import CliRunner

from mnist_ray import cli, cluster, data, runs
from mnist_ray.config import RETRIES, TrainConfig
from mnist_ray.outcome import TrainOutcome
from mnist_ray.query import read_rows
from mnist_ray.store import Store

DATA = data.data_root()
pytestmark = [
    pytest.mark.usefixtures("mnist_data"),  # the MNIST files, downloaded if missing
    pytest.mark.cluster,  # the lane: Ray, a cluster or the CLI as a process
]
# Ray rewrites a 127.0.0.1 address to the machine's outward IP unless told the cluster is
# local only; everything here stays on the loopback interface.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # what `ray.init()` would join
_SCRIPT = Path(sys.executable).with_name("mnist-ray")
MNIST_RAY = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from mnist_ray.cli import app; app()"]
)


def _wait(predicate, what: str, timeout: float = 60.0, every: float = 0.1):
    """Poll until predicate() is truthy; bounded in time, so a failure never hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def running(proc: subprocess.Popen):
    """The subprocess, killed on the way out if it still runs: a failed wait in a test
    never leaves a driver behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def ctrl_c(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Ctrl-C for a `mnist-ray` subprocess: SIGINT, then its stderr once it has exited."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=timeout)[1]


class Local:
    """The module's cluster: its address, and the token folder of tests/faults.py that the
    workers of this process's driver (not those of `cli` drivers) take faults from."""

    def __init__(self, cluster: Cluster, faults: Path):
        self.cluster, self.address, self.faults = cluster, cluster.address, faults

    def tasks(self, **filters) -> list:
        return list_tasks(
            address=self.address,
            filters=[(k, "=", v) for k, v in filters.items()],
            limit=10_000,
            raise_on_missing_output=False,
        )

    def cli(self, *args: str, **kw) -> subprocess.Popen:
        """`mnist-ray ARGS --address <this cluster>` as a separate driver process."""
        env = os.environ | LOOPBACK_ONLY
        return subprocess.Popen(
            [*MNIST_RAY, *args, "--address", self.address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )


@contextlib.contextmanager
def loopback_cluster(
    env: dict[str, str], gpu_node: dict | None = None, runtime_env: dict | None = None
):
    """A `Cluster` of this module's kind (127.0.0.1 only, its own ports, the dashboard for
    the state API) with this process's driver connected (with `runtime_env`, if given), and
    `env` in the environment the nodes' workers inherit. Yields (cluster, the extra node or
    None). On the way out it puts
    back what it changed: the environment, Ray's loopback flag, the address file that a
    bare `ray.init()` would join, and a session-wide Ray it had to shut down."""
    import ray._private.ray_constants as ray_constants

    shared = ray.is_initialized()
    if shared:  # a session-wide Ray from conftest: give way, and bring it back after
        ray.shutdown()
    env = LOOPBACK_ONLY | env
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import time; same meaning as the env
    saved_address = _read_address_file()
    head = Cluster(
        initialize_head=True,
        head_node_args=dict(
            num_cpus=2,
            node_ip_address="127.0.0.1",
            gcs_server_port=free_ports(1)[0],
            include_dashboard=True,  # the state API answers through it
            dashboard_host="127.0.0.1",
            dashboard_port=free_ports(1)[0],
        ),
    )
    ours = head.address
    _restore_address_file(saved_address, ours)  # others' `ray.init()` must not join this one
    try:
        extra = None
        if gpu_node is not None:
            extra = head.add_node(node_ip_address="127.0.0.1", **gpu_node)
            head.wait_for_nodes()
        ray.init(address=ours, log_to_driver=False, logging_level="ERROR", runtime_env=runtime_env)
        yield head, extra
    finally:
        ray.shutdown()
        current = _read_address_file()
        head.shutdown()  # deletes the address file, whoever wrote it last
        if current is not None and current != ours:
            _restore_address_file(current, None)
        else:
            _restore_address_file(saved_address, None)
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if shared:  # a new local instance, never one found through the address file
            ray.init(address="local", num_cpus=2)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    with loopback_cluster({}, runtime_env=faults.runtime_env(folder)) as (head, _):
        yield Local(head, folder)


def _read_address_file() -> str | None:
    try:
        return ADDRESS_FILE.read_text().strip()
    except OSError:
        return None


def _restore_address_file(saved: str | None, ours: str | None) -> None:
    """Put back what `ray.init()` would join, unless someone else has written it since we
    did (ours: the address we may have written; None: restore whatever is there)."""
    current = _read_address_file()
    if ours is not None and current != ours:
        return
    try:
        if saved is None:
            ADDRESS_FILE.unlink(missing_ok=True)
        else:
            ADDRESS_FILE.write_text(saved)
    except OSError:
        pass


@pytest.fixture(scope="module")
def train_split():
    return data.load("mnist", "train")


@pytest.fixture(scope="module")
def test_split():
    return data.load("mnist", "test")


def _stored_run(store: Store, seed: int = 0) -> dict:
    return stored_run(store, seed=seed, scale=0.05)


def _parquet_files(store: Path, table: str) -> list[Path]:
    return sorted((store / table).glob("*.parquet"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- training workers killed: resumed bit-identically, every attempt counted ---------------------


@pytest.fixture(scope="module")
def reference(local, train_split, tmp_path_factory):
    """Five epochs trained on this cluster without a fault: what every killed run must equal."""
    store = Store(tmp_path_factory.mktemp("reference"))
    return cluster.train_on_ray(
        TrainConfig(epochs=5), *train_split, store, "run-reference", log=lambda _: None
    )


def _train_and_store(train_split, store: Store) -> dict:
    """`submit train --epochs 5 --checkpoint-every 0` through this process's driver, whose
    workers take faults from the token folder."""
    store.check_writable()
    return runs.train_and_store(
        TrainConfig(epochs=5), *train_split, store, None, checkpoint_every=0, log=lambda _: None
    )


def _assert_same_training(row: dict, reference: TrainOutcome, store: Store) -> None:
    assert row["epoch_costs"] == reference.epoch_costs  # exact floats, every epoch
    weights = store.read_weights(row)
    for name in ("weight", "bias"):
        assert weights[name].tobytes() == reference.weights[name].tobytes()
    assert [p.stem for p in _parquet_files(Path(store.location), "runs")] == [row["run_id"]]
    assert not (Path(store.location) / "checkpoints" / row["run_id"]).exists()  # cleared


def _attempts_seen_by_ray(local: Local, run_id: str, at_least: int) -> list[tuple[int, str]]:
    """(attempt number, state) of each attempt of the run's training task, once the state
    API has its last attempt FINISHED and at least `at_least` attempts (its task events
    arrive asynchronously, within seconds)."""
    tasks = _wait(
        lambda: (
            (found := local.tasks(name=f"train {run_id}"))
            and len(found) >= at_least
            and any(t.state == "FINISHED" for t in found)
            and found
        ),
        f"{at_least} attempts of train {run_id}, one FINISHED, in the state API",
        timeout=30,
    )
    return sorted((t.attempt_number, t.state) for t in tasks)


def test_killed_training_worker_resumes_bit_identically(local, train_split, reference, tmp_path):
    store = Store(tmp_path / "killed")
    got = {}
    thread = threading.Thread(target=lambda: got.update(row=_train_and_store(train_split, store)))
    thread.start()
    checkpoints = tmp_path / "killed" / "checkpoints"
    run_dir = _wait(lambda: next(checkpoints.glob("run-*"), None), "the first checkpoint")
    task = _wait(
        lambda: local.tasks(name=f"train {run_dir.name}", state="RUNNING"),
        "the training task in the state API",
    )[0]
    _wait(lambda: (run_dir / "epoch-00000002.safetensors").exists(), "epoch 2", every=0.02)
    os.kill(task.worker_pid, signal.SIGKILL)  # from outside, while it trains epoch 3
    thread.join(timeout=240)
    assert not thread.is_alive(), "training did not finish after the kill"

    row = got["row"]
    assert row["attempts"] == 2
    assert _attempts_seen_by_ray(local, row["run_id"], 2) == [(0, "FAILED"), (1, "FINISHED")]
    _assert_same_training(row, reference, store)


def test_two_killed_training_workers_make_three_attempts(local, train_split, reference, tmp_path):
    """Killed after the checkpoints of epochs 2 and 4: each retry resumes from the newest."""
    tokens = [local.faults / "checkpoint-2-a", local.faults / "checkpoint-4-a"]
    for token in tokens:
        token.touch()
    store = Store(tmp_path / "store")
    row = _train_and_store(train_split, store)
    assert [t.exists() for t in tokens] == [False, False]  # both deaths happened
    assert row["attempts"] == 3
    assert _attempts_seen_by_ray(local, row["run_id"], 3) == [
        (0, "FAILED"),
        (1, "FAILED"),
        (2, "FINISHED"),
    ]
    _assert_same_training(row, reference, store)


def test_kill_before_the_first_checkpoint_still_counts(local, train_split, reference, tmp_path):
    """A retry with no checkpoint to resume from starts again at epoch 1: two attempts all
    the same (the row's count comes from Ray, not from whether a checkpoint was found)."""
    token = local.faults / "train-1"
    token.touch()
    store = Store(tmp_path / "store")
    row = _train_and_store(train_split, store)
    assert not token.exists()
    assert row["attempts"] == 2
    assert _attempts_seen_by_ray(local, row["run_id"], 2) == [(0, "FAILED"), (1, "FINISHED")]
    _assert_same_training(row, reference, store)


# ---- a shard task killed ----------------------------------------------------------------------


def test_killed_shard_is_retried_with_identical_counts(local, test_split, tmp_path):
    images, labels = test_split
    store = Store(tmp_path / "store")
    run = _stored_run(store)
    reference = cluster.evaluate_on_ray(store.read_weights(run), images, labels, 4, 0)

    token = local.faults / "shard-1"
    token.touch()  # the first shard task to start takes it and SIGKILLs its own worker
    result = CliRunner().invoke(
        cli.app,
        ["evaluate", "--run", run["run_id"], "--shards", "4", "--store", store.location, "--json"],
    )
    assert result.exit_code == 0, result.output
    assert not token.exists()  # the fault really fired
    rows, bad = read_rows(store, "evaluations")
    assert len(rows) == 1 and not bad
    assert rows[0]["accuracy"] == reference["accuracy"]
    assert rows[0]["confusion"] == reference["confusion"]
    assert rows[0]["correct"] == reference["correct"] and rows[0]["total"] == 10_000


# ---- retries exhausted ------------------------------------------------------------------------


def _assert_gave_up(exit_code: int, stderr: str, stage: str) -> None:
    """Retries used up: exit 1 and one line naming the stage and the worker's death."""
    assert exit_code == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert f"{stage} failed after {RETRIES} retries" in errors[0]
    assert "worker died" in errors[0].lower()
    assert "Traceback" not in stderr


def test_training_retries_exhausted_is_one_clear_line(local, tmp_path):
    store = tmp_path / "store"
    killed: set[int] = set()

    def kill_each_attempt() -> bool:  # every attempt, from outside, until the driver exits
        for t in local.tasks(state="RUNNING"):
            if t.name.startswith("train run-") and t.worker_pid not in killed:
                os.kill(t.worker_pid, signal.SIGKILL)
                killed.add(t.worker_pid)
        return proc.poll() is not None

    with running(local.cli("submit", "train", "--epochs", "500", "--store", str(store))) as proc:
        _wait(kill_each_attempt, "the driver to give up", timeout=240, every=0.2)
        _, stderr = proc.communicate(timeout=60)
    assert len(killed) == 1 + RETRIES
    _assert_gave_up(proc.returncode, stderr, "training")
    (row,) = pq.read_table(_parquet_files(store, "runs")[0]).to_pylist()  # the run, failed
    assert row["status"] == "failed" and f"after {RETRIES} retries" in row["failure"]
    assert row["weights_sha256"] is None and list((store / "weights").glob("*")) == []


def test_evaluation_retries_exhausted_is_one_clear_line(local, tmp_path):
    store = Store(tmp_path / "store")
    run = _stored_run(store)
    for i in range(1 + RETRIES):  # a death in every attempt of the one shard
        (local.faults / f"shard-{i}").touch()
    result = CliRunner().invoke(  # this process's driver: its workers take the faults
        cli.app, ["evaluate", "--run", run["run_id"], "--shards", "1", "--store", store.location]
    )
    _assert_gave_up(result.exit_code, result.stderr, "evaluation")
    assert list(local.faults.glob("shard-*")) == []
    assert _parquet_files(tmp_path / "store", "evaluations") == []


# ---- a node lost ------------------------------------------------------------------------------


def test_node_lost_during_evaluation(local, test_split, tmp_path):
    images, labels = test_split
    store = Store(tmp_path / "store")
    weights = store.read_weights(_stored_run(store))
    reference = cluster.evaluate_on_ray(weights, images, labels, 1, 0)
    extra = local.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    extra_id = extra.node_id
    got = {}

    # The first shard to start on the extra node stalls there, so the node surely dies with
    # a shard on it: seeing a millisecond shard RUNNING through the state API is a race.
    stall = local.faults / f"stall-shard-{extra_id}"
    stall.touch()

    def evaluate():  # many shards, so that some land on the extra node
        got["merged"] = cluster.evaluate_on_ray(weights, images, labels, 1000, 0)

    thread = threading.Thread(target=evaluate)
    try:
        thread.start()
        _wait(lambda: not stall.exists(), "a shard to start on the extra node", every=0.05)
    finally:
        local.cluster.remove_node(extra, allow_graceful=False)
        stall.unlink(missing_ok=True)
    assert thread.is_alive(), "the evaluation ended before the node was lost"
    thread.join(timeout=240)
    assert not thread.is_alive()
    merged = got["merged"]
    assert merged["confusion"] == reference["confusion"]
    assert merged["accuracy"] == reference["accuracy"]
    assert local.cluster.head_node.node_id in merged["node_ids"]
    retried = _wait(  # the shards lost with the node ran again, on the head
        lambda: [
            t
            for t in local.tasks(state="FINISHED")
            if t.name.startswith("shard ") and t.attempt_number > 0
        ],
        "a retried shard in the state API",
        timeout=30,
        every=1.0,
    )
    assert {t.node_id for t in retried} == {local.cluster.head_node.node_id}


# ---- Ctrl-C -----------------------------------------------------------------------------------


def test_ctrl_c_cancels_the_training_task(local, tmp_path):
    store = tmp_path / "store"
    command = ("submit", "train", "--epochs", "500", "--checkpoint-every", "0", "--discard")
    with running(local.cli(*command, "--store", str(store))) as proc:
        first = _wait(
            lambda: next((store / "checkpoints").glob("run-*/epoch-00000001*"), None), "epoch 1"
        )
        run_id = first.parent.name
        task = _wait(
            lambda: local.tasks(name=f"train {run_id}", state="RUNNING"), "the running task"
        )[0]
        stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert f"interrupted: run {run_id} discarded" in stderr
    assert "Traceback" not in stderr
    _wait(lambda: not local.tasks(name=f"train {run_id}", state="RUNNING"), "no running task", 30)
    _wait(lambda: not _alive(task.worker_pid), "the training worker to exit", 30)
    assert _parquet_files(store, "runs") == []
    assert list((store / "weights").glob("*")) == []
    # The driver waited for the task to end before deleting its checkpoints; its worker is
    # gone now, and a cancelled task is not retried, so nothing can write one after.
    assert not (store / "checkpoints" / run_id).exists()


# ---- impossible requests fail fast ------------------------------------------------------------


@pytest.mark.parametrize(
    "option, said",
    [
        (("--gpus", "1"), "--gpus 1: the Ray cluster has no GPU"),
        (("--cpus", "64"), "--cpus 64: no node of the Ray cluster has 64 CPUs"),
    ],
    ids=["gpus_1_on_a_cpu_only_cluster", "more_cpus_than_any_node_has"],
)
def test_a_request_no_node_can_take_fails_fast(local, tmp_path, option, said):
    proc = local.cli("submit", "train", "--epochs", "1", *option, "--store", str(tmp_path))
    _, stderr = proc.communicate(timeout=60)  # a task no node can take would wait forever
    assert proc.returncode == 1
    assert said in stderr
    assert "Traceback" not in stderr
    assert _parquet_files(tmp_path, "runs") == []


def test_unreachable_address_fails_fast(tmp_path):
    proc = subprocess.run(
        [*MNIST_RAY, "submit", "train", "--epochs", "1"]
        + ["--store", str(tmp_path), "--address", f"127.0.0.1:{free_ports(1)[0]}"],
        capture_output=True,
        text=True,
        timeout=60,  # Ray's own connect retries would go on for minutes
    )
    assert proc.returncode == 1
    assert "nothing answers at 127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- concurrent writers -----------------------------------------------------------------------


def test_eight_concurrent_evaluations_write_eight_rows(local, tmp_path):
    store = Store(tmp_path / "store")
    run = _stored_run(store)
    procs = [
        local.cli("evaluate", "--run", run["run_id"], "--shards", "2", "--store", store.location)
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    rows, bad = read_rows(store, "evaluations")
    assert not bad
    assert len(rows) == 8 and len({r["eval_id"] for r in rows}) == 8
    assert len(_parquet_files(tmp_path / "store", "evaluations")) == 8
    assert len({r["accuracy"] for r in rows}) == 1


# ---- stdout stays one JSON document while Ray reports a worker's death ------------------------


def test_killed_training_worker_leaves_stdout_one_json_document(local, train_split, tmp_path):
    """HOST:PORT: Ray prints `(raylet) A worker died ...` to the driver's stdout; it must end up
    on stderr as one line, and the retried run's costs equal an uninterrupted run's."""
    import json

    images, labels = train_split
    store = tmp_path / "store"
    # 40 epochs (seconds of training): the kill must land while the task runs, even when
    # the state API reports it late.
    reference = {}
    ref_thread = threading.Thread(  # the same training, uninterrupted, on the other CPU
        target=lambda: reference.update(
            vars(
                cluster.train_on_ray(
                    TrainConfig(epochs=40), images, labels, Store(tmp_path / "ref"), "run-reference"
                )
            )
        )
    )
    command = ("submit", "train", "--epochs", "40", "--checkpoint-every", "0")
    with running(local.cli(*command, "--store", str(store), "--json")) as proc:
        task = _wait(
            lambda: [t for t in local.tasks(state="RUNNING") if t.name.startswith("train run-")],
            "the training task",
            timeout=120,
        )[0]
        ref_thread.start()
        _wait(  # into its epochs: its first checkpoint is written
            lambda: next((store / "checkpoints").glob("run-*/epoch-00000001*"), None),
            "epoch 1",
            timeout=120,
            every=0.02,
        )
        os.kill(task.worker_pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    ref_thread.join(timeout=300)
    assert proc.returncode == 0, stderr
    row = json.loads(stdout)  # the whole of stdout
    assert row["epoch_costs"] == reference["epoch_costs"]
    assert row["attempts"] == 2  # Ray really retried it
    died = [line for line in stderr.splitlines() if "A worker died" in line]
    assert len(died) == 1 and f"pid {task.worker_pid}" in died[0], stderr

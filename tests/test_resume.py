"""A run exists from its first moment: killed, stopped or failed it is left `interrupted` or
`failed` in the store, and `submit train --resume RUN` finishes it bit-identically.

The drivers are real `mnist-ray` processes, killed from outside; the rows are read back
from the Parquet files; the reference is an uninterrupted run on the session's Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, VENV_BIN, ensure_ray, run_row, stored_run
from typer.testing import CliRunner

from mnist_ray import liveness, runs, signals
from mnist_ray.cli import app
from mnist_ray.compact import compact
from mnist_ray.config import TrainConfig
from mnist_ray.errors import ClusterError
from mnist_ray.query import read_rows
from mnist_ray.store import Store, now

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process

runner = CliRunner()
TRAIN = ["submit", "train", "--epochs", "3", "--checkpoint-every", "0"]
# This user's environment: the session's Ray takes the token in ~/.ray (RAY_AUTH_MODE).
DRIVER_ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with the same settings, trained on the session's Ray."""
    ensure_ray()
    store = tmp_path_factory.mktemp("reference")
    got = invoke(*TRAIN, "--store", str(store), "--json")
    assert got.exit_code == 0, got.output
    row = json.loads(got.stdout)
    return row, Store(str(store)).read_weights(row)


@pytest.fixture(scope="module")
def gcs():
    """The session's Ray as HOST:PORT, for drivers in other processes."""
    return ensure_ray().get_runtime_context().gcs_address


class Driver:
    """`mnist-ray ARGS` in its own process group, its stderr read line by line."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(
            [f"{VENV_BIN}/mnist-ray", *args],
            env=DRIVER_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: str, timeout: float = 240) -> None:
        while True:
            line = self.lines.get(timeout=timeout)  # queue.Empty: it never came
            assert line is not None, f"ended without {needle!r}:\n{''.join(self.seen)}"
            self.seen.append(line)
            if needle in line:
                return

    def end(self, timeout: float = 180) -> tuple[int, str, str]:
        """Exit code, stdout, the whole of stderr once it exited."""
        rc = self.proc.wait(timeout=timeout)
        out = self.proc.stdout.read()
        while (line := self.lines.get(timeout=30)) is not None:
            self.seen.append(line)
        return rc, out, "".join(self.seen)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def only_run(store: Path) -> dict:
    rows, bad = read_rows(Store(str(store)), "runs")
    assert bad == [] and len(rows) == 1, rows
    return rows[0]


def results(store: Path, *args: str) -> list[dict]:
    got = invoke("results", "--store", str(store), "--json", *args)
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)["runs"]


def test_a_killed_driver_reads_interrupted_and_resume_finishes_it_bit_identically(
    reference, gcs, tmp_path
):
    store = tmp_path / "store"
    driver = Driver([*TRAIN, "--store", str(store)])  # an embedded Ray of its own
    try:
        driver.wait_for("Epoch: 0002")
    finally:
        driver.kill_group()  # SIGKILL: the driver and its Ray, without a word
    driver.end()
    run = only_run(store)
    assert run["status"] == "interrupted" and run["checkpoint_epoch"] >= 2
    (shown,) = results(store)
    assert (shown["status"], shown["last_cost"], shown["accuracy"]) == ("interrupted", None, None)
    assert [r["run_id"] for r in results(store, "--where", "status = 'interrupted'")] == [
        run["run_id"]
    ]
    assert results(store, "--where", "status = 'finished'") == []

    # Through a running head (HOST:PORT), by a unique prefix of the id.
    resumed = Driver(
        ["submit", "train", "--resume", run["run_id"][:-3], "--store", str(store), "--address", gcs, "--json"],
    )  # fmt: skip
    rc, out, err = resumed.end(timeout=300)
    assert rc == 0, err
    assert [line[:11] for line in err.splitlines() if line.startswith("Epoch: ")] == [
        "Epoch: 0001",
        "Epoch: 0002",
        "Epoch: 0003",
    ]  # the run's whole history, restored epochs included
    row, weights = reference
    done = json.loads(out)
    assert done["run_id"] == run["run_id"] and done["created_at"] == run["created_at"].isoformat()
    assert done["status"] == "finished" and done["epoch_costs"] == row["epoch_costs"]
    for name, array in Store(str(store)).read_weights(done).items():
        assert array.tobytes() == weights[name].tobytes()
    assert [p.name for p in (store / "runs").iterdir()] == [f"{run['run_id']}.parquet"]
    assert only_run(store)["status"] == "finished"
    assert not (store / "checkpoints" / run["run_id"]).exists()
    assert not list((store / "drivers").glob("*.json"))


def test_ctrl_c_leaves_the_run_interrupted_and_says_how_to_go_on(tmp_path):
    store = tmp_path / "store"
    driver = Driver([*TRAIN, "--store", str(store)])
    try:
        driver.wait_for("Epoch: 0002")
        os.killpg(driver.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole group
        rc, out, err = driver.end()
    finally:
        driver.kill_group()
    run = only_run(store)
    assert rc == 130 and out == "", err
    last = err.strip().splitlines()[-1]
    assert f"mnist-ray submit train --resume {run['run_id']} --store {store}" in last, err
    assert run["status"] == "interrupted" and run["checkpoint_epoch"] >= 2
    # Every epoch it printed is in the row, the costs as printed (the row is written at
    # Ctrl-C, which may come the moment after an epoch's line).
    printed = [
        line.split("cost = ")[1].strip() for line in err.splitlines() if line.startswith("Epoch: ")
    ]
    assert (
        len(printed) >= 2 and [f"{c:.9f}" for c in run["epoch_costs"]][: len(printed)] == printed
    ), err
    assert run["weights_sha256"] is None and (run["cpus"], run["gpus"]) == (1, "auto")
    assert (store / "checkpoints" / run["run_id"] / "epoch-00000002.safetensors").exists()

    # Options that contradict the run are refused, one line, exit 2; agreeing ones are not.
    for option, value in (("--epochs", "5"), ("--lr", "0.5"), ("--model", "mlp")):
        got = invoke(
            "submit", "train", "--resume", run["run_id"], option, value, "--store", str(store)
        )
        assert got.exit_code == 2, got.output
        lines = got.output.strip().splitlines()
        assert len(lines) == 1 and f"{option} {value}: run {run['run_id']}" in lines[0], lines
    assert only_run(store)["status"] == "interrupted"  # nothing changed
    got = invoke("evaluate", "--run", run["run_id"], "--store", str(store))
    assert got.exit_code == 1 and "is interrupted and has no weights" in got.output, got.output


def test_through_ray_client_a_signal_waits_for_the_call_in_flight():
    """ray://: Ctrl-C or SIGTERM during a call (gRPC, which a KeyboardInterrupt inside can
    leave waited on for ever) is raised after it, at raise_held() or the block's end; a
    second Ctrl-C is raised at once, and the handlers are as they were after."""
    import time

    def press(signum: int) -> None:
        os.kill(os.getpid(), signum)
        time.sleep(0.2)  # a call in flight: the signal has come, and is not raised in it

    got: list[str] = []
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(KeyboardInterrupt):
        with signals.held_between_calls():
            press(signal.SIGINT)
            got.append("the call ended")
            signals.raise_held()  # the polling loop, between calls
            got.append("went on")
    with pytest.raises(signals.Stopped):
        with signals.held_between_calls(), signals.sigterm_stops():
            press(signal.SIGTERM)
            got.append("the block ended")
    with pytest.raises(KeyboardInterrupt):
        with signals.held_between_calls():
            press(signal.SIGINT)
            press(signal.SIGINT)
            got.append("held twice")
    with signals.held_between_calls():
        got.append("no signal")
    assert got == ["the call ended", "the block ended", "no signal"]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_discard_leaves_nothing(gcs, tmp_path):
    store = tmp_path / "store"
    driver = Driver([*TRAIN, "--discard", "--store", str(store), "--address", gcs])
    try:
        driver.wait_for("Epoch: 0001")
        driver.proc.send_signal(signal.SIGINT)
        rc, _, err = driver.end()
    finally:
        driver.kill_group()
    assert rc == 130, err
    assert "discarded" in err.strip().splitlines()[-1], err
    assert list((store / "runs").glob("*.parquet")) == []
    assert list((store / "checkpoints").glob("run-*")) == []


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_resuming_a_finished_run_changes_no_byte(tmp_path):
    store = Store(str(tmp_path))
    run = stored_run(store)  # a row from before statuses: reads as finished
    before = _snapshot(tmp_path)
    got = invoke("submit", "train", "--resume", run["run_id"], "--store", str(tmp_path), "--json")
    assert got.exit_code == 0, got.output
    assert f"run {run['run_id']} is finished; nothing to resume" in got.stderr
    assert json.loads(got.stdout)["run_id"] == run["run_id"]
    assert _snapshot(tmp_path) == before


def test_a_running_run_reads_running_while_its_driver_beats_and_is_not_resumed(tmp_path):
    store = Store(str(tmp_path))
    settings = dict(run_id="run-live", created_at=now(), **TrainConfig(epochs=3).to_dict())
    with liveness.Heartbeat(store, "run-live"):
        store.write_row("runs", runs.unfinished(settings, "running", [], None))
        assert only_run(tmp_path)["status"] == "running"
        got = invoke("submit", "train", "--resume", "run-live", "--store", str(tmp_path))
        assert got.exit_code == 1 and "is still running" in got.output, got.output
        assert len(got.output.strip().splitlines()) == 1
    # The driver gone (its file with it) and the row still running: interrupted.
    assert only_run(tmp_path)["status"] == "interrupted"
    stale = {"host": "elsewhere", "pid": 1, "heartbeat": "2020-01-01T00:00:00+00:00"}
    assert not liveness.alive(stale) and liveness.alive(stale | {"heartbeat": now().isoformat()})


def test_a_compacted_running_row_and_its_newer_finished_row_read_as_one(tmp_path):
    store = Store(str(tmp_path))
    settings = dict(run_id="run-a", created_at=now(), **TrainConfig(epochs=1).to_dict())
    store.write_row("runs", runs.unfinished(settings, "running", [], None))
    store.write_row("runs", run_row("run-b", "w", "s"))
    assert compact(store, "runs")["merged"] == 2
    final = run_row("run-a", "w", "s") | {"status": "finished", "updated_at": now()}
    final["created_at"] = settings["created_at"]
    store.write_row("runs", final)  # beside the compacted file that holds run-a running
    assert len(list((tmp_path / "runs").glob("*.parquet"))) == 2
    for _ in range(2):  # as read, then as compacted again
        rows = {r["run_id"]: r for r in read_rows(store, "runs")[0]}
        assert sorted(rows) == ["run-a", "run-b"]
        assert rows["run-a"]["status"] == "finished" and rows["run-a"]["epoch_costs"] == [1.0]
        assert rows["run-a"]["checkpoint_epoch"] is None
        compact(store, "runs")
    (merged,) = (tmp_path / "runs").glob("*.parquet")
    assert pq.read_table(merged)["status"].to_pylist() == ["finished", "finished"]  # one row each


def test_a_store_from_before_statuses_reads_as_finished(tmp_path):
    store = Store(str(tmp_path))
    run = stored_run(store)
    path = tmp_path / "runs" / f"{run['run_id']}.parquet"
    new = [
        "updated_at",
        "status",
        "failure",
        "cpus",
        "gpus",
        "checkpoint_epoch",
        "checkpoint_every",
    ]
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([c for c in new if c in table.column_names]), path)
    (shown,) = results(tmp_path, "--where", "status = 'finished'")
    assert shown["run_id"] == run["run_id"] and shown["last_cost"] == 1.0
    got = invoke("query", "select status from runs", "--store", str(tmp_path), "--json")
    assert json.loads(got.stdout) == [{"status": "finished"}]


def test_a_failed_run_says_why_and_keeps_its_settings(mnist_train, tmp_path):
    """The training task raises (its checkpoint folder is a file): the run is failed, with
    its cause, not lost; a request refused up front (--gpus 1 without a GPU) leaves nothing."""
    ensure_ray()
    store = Store(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "run-fails").write_text("a file where a folder should be")
    with pytest.raises(ClusterError, match="training failed: StoreError"):
        runs.train_and_store(
            TrainConfig(epochs=3), *mnist_train, store, None, gpus="0", checkpoint_every=0,
            log=lambda _: None, cpus=1, run_id="run-fails",
        )  # fmt: skip
    run = only_run(tmp_path)
    assert run["status"] == "failed" and run["failure"].startswith("training failed: StoreError")
    assert (run["gpus"], run["epochs"], run["checkpoint_every"], run["cpus"]) == ("0", 3, 0, 1)
    (shown,) = results(tmp_path)
    assert shown["status"] == "failed" and shown["last_cost"] is None
    assert shown["failure"] == run["failure"]
    table = runner.invoke(app, ["results", "--store", str(tmp_path)], env={"COLUMNS": "300"})
    assert "│ failed" in table.stdout, table.stdout

    if ensure_ray().cluster_resources().get("GPU", 0) < 1:
        import torch

        got = invoke(*TRAIN, "--gpus", "1", "--store", str(tmp_path / "refused"))
        if torch.cuda.is_available():  # this machine has a GPU; the session's Ray has none
            assert got.exit_code == 1 and "--gpus 1: the Ray cluster has no GPU" in got.output
        else:  # embedded on a machine without one: refused before Ray, as a bad option
            assert got.exit_code == 2 and "this machine has no GPU" in got.output
        assert list((tmp_path / "refused" / "runs").glob("*")) == []

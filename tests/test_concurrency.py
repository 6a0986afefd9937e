"""Many embedded commands at once on a small machine all finish with their rows.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_concurrency.py -q

Each command starts a Ray of its own; the starts take turns (a lock on the machine), since a
raylet that can't register within Ray's fixed 30 s fails its command (`The current node
timed out during startup`), which eight starts at once on two cores made happen.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import VENV_BIN, client_env, stored_run

from mnist_ray.query import read_rows
from mnist_ray.store import Store

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process


def test_eight_evaluations_and_four_trainings_at_once_all_succeed(mnist_data, tmp_path):
    store = Store(tmp_path / "store")
    run = stored_run(store, scale=0.05)
    env = client_env(tmp_path, MNIST_RAY_DATA=str(mnist_data))
    base = [f"{VENV_BIN}/mnist-ray", "--store", store.location]
    commands = [["evaluate", "--run", run["run_id"], "--shards", "2"]] * 8 + [
        ["submit", "train", "--epochs", "1"]
    ] * 4
    procs = [
        subprocess.Popen(
            [base[0], *args, *base[1:]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    try:
        outs = [p.communicate(timeout=540) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [err[-800:] for p, (_, err) in zip(procs, outs, strict=True) if p.returncode != 0]
    assert not failed, failed
    evals, bad_evals = read_rows(store, "evaluations")
    runs, bad_runs = read_rows(store, "runs")
    assert not bad_evals and not bad_runs
    assert len(evals) == 8 and {e["run_id"] for e in evals} == {run["run_id"]}
    assert len(runs) == 1 + 4 and all(r["epoch_costs"] for r in runs)


CLEAN_UP = """
import os, subprocess, sys, time
import ray
from mnist_ray import session

bystander = subprocess.Popen(["sleep", "60"])  # a child that is not Ray's
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
node = ray._private.worker._global_node
pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
session.end_children()  # what a timed-out start is cleaned up with
deadline = time.monotonic() + 60  # until the killed ones are gone, bounded
while any(alive(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(0.05)
print(sum(alive(p) for p in pids), len(pids), alive(bystander.pid))
bystander.kill()
os._exit(0)
"""


def test_a_failed_start_is_cleaned_up_and_nothing_else(tmp_path):
    import sys

    got = subprocess.run(
        [sys.executable, "-c", CLEAN_UP],
        env=client_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    alive, started, bystander = got.stdout.split()
    assert int(started) >= 3 and alive == "0", got.stdout  # the GCS, the raylet, the agents
    assert bystander == "True"

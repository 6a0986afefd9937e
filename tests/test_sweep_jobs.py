"""`mnist-ray sweep --address http://...`: the sweep submitted as a Ray job.

A token-protected two-node `ray start` cluster (conftest.ray_cli_cluster: a CPU head and a
worker declaring one GPU); `mnist-ray` runs as a subprocess, the way a user runs it. Kept
apart from tests/test_sweep.py, whose own cluster is gone before this one starts.
"""

from __future__ import annotations

import json

import pytest
from conftest import client_env, mnist_ray

from mnist_ray.query import read_rows
from mnist_ray.store import Store

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process


def test_sweep_through_the_jobs_api_lands_quarter_gpu_trials(ray_cli_cluster, tmp_path):
    cluster, gpu_node_id = ray_cli_cluster
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    args = ["sweep", "--lr", "0.1,0.5", "--epochs", "1", "--json"]
    done = mnist_ray([*args, "--address", cluster.dashboard, "--store", str(store)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitted job raysubmit_" in done.stderr
    runs = read_rows(Store(str(store)), "runs")[0]
    assert sorted(r["lr"] for r in runs) == [0.1, 0.5] and len({r["sweep_id"] for r in runs}) == 1
    for run in runs:  # the default share where the cluster has a GPU: a quarter of it
        assert run["node_id"] == gpu_node_id and run["gpu_ids"] == [0]
    (row,) = read_rows(Store(str(store)), "sweeps")[0]
    assert row["status"] == "finished"
    assert json.loads(row["definition"])["gpus_per_trial"] is None  # chosen on the cluster

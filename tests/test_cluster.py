"""Ray: the real local Ray of the session, and a real two-node cluster with a GPU node."""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import pytest

from mnist_ray.cluster import ClusterError, evaluate_on_ray, train_on_ray
from mnist_ray.config import TrainConfig
from mnist_ray.evaluate import evaluate_shard, merge
from mnist_ray.placement import check_fits, gpu_request
from mnist_ray.session import connect
from mnist_ray.store import Store

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process


@pytest.fixture(scope="module")
def random_weights():
    rng = np.random.default_rng(1)
    return {
        "weight": rng.normal(0, 0.01, (10, 784)).astype(np.float32),
        "bias": rng.normal(0, 0.01, 10).astype(np.float32),
    }


def test_training_task_reports_where_it_ran(ray_local, mnist_train, tmp_path):
    notices = []
    outcome = train_on_ray(
        TrainConfig(epochs=1),
        *mnist_train,
        Store(tmp_path),
        "run-t1",
        gpus="auto",
        log=notices.append,
    )
    assert notices == [
        "No GPU in the Ray cluster: training on the CPU.",
        "Epoch: 0001 cost = 0.535150588",  # progress, once per epoch
    ]
    assert f"{outcome.epoch_costs[0]:.9f}" == "0.535150588"
    assert outcome.device == "cpu" and outcome.gpu_ids == []
    assert outcome.node_id == ray_local.get_runtime_context().get_node_id()
    assert outcome.weights["weight"].shape == (10, 784)
    # progress came over Ray: the task wrote nothing to the store (a checkpoint waits 60 s)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_every_0_writes_one_per_epoch_but_the_last(ray_local, mnist_train, tmp_path):
    train_on_ray(
        TrainConfig(epochs=3), *mnist_train, Store(tmp_path), "run-c0", gpus="0",
        log=lambda _: None, checkpoint_every=0,
    )  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "checkpoints" / "run-c0").iterdir())
    assert names == ["epoch-00000001.safetensors", "epoch-00000002.safetensors"]


def test_requiring_a_gpu_on_a_cpu_cluster_fails_at_once(ray_local):
    started = time.monotonic()
    with pytest.raises(ClusterError, match="^gpus 1: the Ray cluster has no GPU"):
        gpu_request("1")
    assert time.monotonic() - started < 5
    assert gpu_request("0") == 0


def test_a_task_no_node_can_take_is_refused_at_once(ray_local):
    check_fits(1, 0)  # the local cluster has a CPU
    with pytest.raises(ClusterError, match="^cpus 10000: no node of the Ray cluster has 10000"):
        check_fits(10_000, 0)
    with pytest.raises(ClusterError, match="the largest node with a GPU has 0"):
        check_fits(1, 1)


def test_shard_progress_counts_up(ray_local, random_weights, mnist_test):
    lines: list[str] = []
    got = evaluate_on_ray(random_weights, *mnist_test, 300, 42, log=lines.append)
    assert got["total"] == 10_000
    counts = [int(re.fullmatch(r"Shards done: (\d+)/300", line).group(1)) for line in lines]
    assert counts == sorted(set(counts)) and all(0 < c <= 300 for c in counts)
    assert counts[-1] == 300  # the last line says every shard is done


@pytest.mark.parametrize("shards", [1, 5])
def test_sharded_evaluation_equals_one_pass(ray_local, random_weights, mnist_test, shards):
    import torch

    images, labels = mnist_test
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a shard task (num_cpus=1): the sums' order is the count's
    try:
        expected = merge([evaluate_shard(random_weights, images, labels, sample=42)])
    finally:
        torch.set_num_threads(threads)
    got = evaluate_on_ray(random_weights, images, labels, shards, 42)
    assert got.pop("node_ids") == [ray_local.get_runtime_context().get_node_id()]
    assert got.pop("shard_peak_rss_mib") > 0  # a worker process's peak, whatever it ran before
    assert got == expected


def test_connect_refuses_an_address_nobody_listens_on():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(ClusterError, match=f"nothing answers at 127.0.0.1:{port}"):
            with connect(f"127.0.0.1:{port}"):
                pass


def test_two_node_cluster_puts_training_on_the_gpu_node(mnist_train, mnist_test, tmp_path):
    """A CPU-only head and a second node declaring one GPU (ray.cluster_utils.Cluster)."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_tasks

    if ray.is_initialized():
        ray.shutdown()  # the session's local Ray; the next test that needs it starts it again
    loopback = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, **loopback})
    stack = contextlib.ExitStack()
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, **loopback)
        stack.enter_context(connect(cluster.address))  # as `--address 127.0.0.1:PORT` does
        cluster.wait_for_nodes()
        assert gpu_request("auto") == 1
        outcome = train_on_ray(
            TrainConfig(epochs=1), *mnist_train, Store(tmp_path), "run-gpu", gpus="auto", log=print
        )
        assert outcome.node_id == gpu_node.node_id
        assert outcome.gpu_ids == [0]
        images, labels = mnist_test
        weights = outcome.weights
        result = evaluate_on_ray(weights, images, labels, 4, 3757)
        assert result["total"] == 10000 and result["sample"]["index"] == 3757
        deadline = time.monotonic() + 60  # task events reach the state API asynchronously
        while True:
            tasks = list_tasks(
                address=cluster.address,  # this cluster's, whatever else runs on the machine
                filters=[("state", "=", "FINISHED")],
                detail=True,
                timeout=30,
            )
            train = [t for t in tasks if t.name == "train run-gpu"]
            shards = [t for t in tasks if t.name.startswith("shard ")]
            if (len(train), len(shards)) == (1, 4) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(train) == 1 and train[0].required_resources == {"CPU": 1.0, "GPU": 1.0}
        assert train[0].node_id == gpu_node.node_id
        assert len(shards) == 4
        assert all(t.required_resources == {"CPU": 1.0} for t in shards)
    finally:
        stack.close()
        cluster.shutdown()


def test_epochs_are_shown_live_once_each(ray_local, mnist_train, tmp_path):
    """Costs arrive over Ray as the task yields them, each once, in order."""
    lines: list[tuple[float, str]] = []
    outcome = train_on_ray(
        TrainConfig(epochs=6),
        *mnist_train,
        Store(tmp_path),
        "run-live",
        gpus="0",
        log=lambda line: lines.append((time.monotonic(), line)),
    )
    epochs = [line for _, line in lines if line.startswith("Epoch: ")]
    assert epochs == [
        f"Epoch: {i:04d} cost = {c:.9f}" for i, c in enumerate(outcome.epoch_costs, 1)
    ]
    shown_at = {round(t, 2) for t, line in lines if line.startswith("Epoch: ")}
    assert len(shown_at) > 1  # shown as they came, not all at once at the end
    assert not (tmp_path / "checkpoints").exists()  # and not through the store


def test_first_epoch_reaches_the_driver_while_training_goes_on(mnist_train, tmp_path):
    """60 epochs on the GPU-declaring node of a two-node cluster: when the driver prints
    epoch 1, the state API still shows the task RUNNING and no run is stored."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_tasks

    if ray.is_initialized():
        ray.shutdown()
    loopback = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **loopback})
    stack = contextlib.ExitStack()
    seen: dict[int, list] = {}

    def log(line: str) -> None:
        match = re.match(r"Epoch: (\d+) cost", line)
        if match and match.group(1) == "0001":  # task events reach the state API within ~1 s
            deadline = time.monotonic() + 20
            while not seen.get(1) and time.monotonic() < deadline:
                tasks = list_tasks(
                    address=cluster.address, filters=[("name", "=", "train run-60")], timeout=30
                )
                seen[1] = [t.state for t in tasks]

    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, **loopback)
        stack.enter_context(connect(cluster.address))
        cluster.wait_for_nodes()
        outcome = train_on_ray(
            TrainConfig(epochs=60), *mnist_train, Store(tmp_path), "run-60", gpus="auto", log=log
        )
    finally:
        stack.close()
        cluster.shutdown()
    assert outcome.node_id == gpu_node.node_id and len(outcome.epoch_costs) == 60
    assert seen[1] == ["RUNNING"], seen  # epoch 1 arrived while the task went on
    assert not (tmp_path / "checkpoints").exists()

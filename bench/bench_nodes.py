"""Does `--shards` pay across nodes? A model's evaluation on one 1-CPU node, then on two.

    MNIST_RAY_DATA=../shared/datasets python bench/bench_nodes.py            # cnn, 4 shards
    MNIST_RAY_DATA=../shared/datasets python bench/bench_nodes.py --model cnn-deep --repeat 5

A `ray.cluster_utils.Cluster` on loopback: a head declaring 1 CPU, evaluated with 1 and 4
shards; then a second node declaring 1 CPU joins and the same evaluations run again, the
shards spread over both nodes (evaluate_on_ray's SPREAD). Each figure is a new driver
connection's first evaluation ("cold": fresh workers) and the best of the next ones
("warm"), with the scores the product uses (the model's ONNX export), fresh weights.

On one machine the "nodes" share its cores, so this shows what a second node's CPU buys
when the machine has a core to give it (the 2-core build machine has: one per node), not
a network's cost: the test set goes to the second node through its own object store all
the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ray
import torch
from ray.cluster_utils import Cluster

from mnist_ray import artifact
from mnist_ray.cluster import evaluate_on_ray
from mnist_ray.data import load
from mnist_ray.evaluate import sample_index
from mnist_ray.model import get_model
from mnist_ray.session import connect

LOOPBACK = {"node_ip_address": "127.0.0.1"}


def timed(address: str, onnx: bytes, images, labels, shards: int, repeat: int) -> tuple:
    sample = sample_index(777, len(labels))
    times = []
    with connect(address, log=lambda _: None):  # a new job: fresh workers
        for _ in range(1 + repeat):
            started = time.perf_counter()
            merged = evaluate_on_ray(
                None, images, labels, shards, sample, log=lambda _: None, onnx=onnx
            )
            times.append(time.perf_counter() - started)
    return times[0], min(times[1:]), len(merged["node_ids"]), merged["correct"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_RAY_DATA"))
    parser.add_argument("--model", default="cnn", help="a built-in model (fresh weights)")
    parser.add_argument("--repeat", type=int, default=3, help="warm evaluations after the cold one")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("set --data-dir or MNIST_RAY_DATA to the folder holding MNIST/raw/")
    torch.manual_seed(777)
    weights = {k: v.numpy() for k, v in get_model(args.model).state_dict().items()}
    onnx = artifact.export(args.model, weights)
    images, labels = load("mnist", "test", args.data_dir)
    print(
        f"model {args.model} (ONNX Runtime shards); {os.cpu_count()} CPUs on this machine; "
        f"Ray {ray.__version__}; load average {os.getloadavg()[0]:.1f} at the start"
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **LOOPBACK})
    figures = {}
    try:
        for nodes in (1, 2):
            if nodes == 2:
                cluster.add_node(num_cpus=1, **LOOPBACK)
                cluster.wait_for_nodes()
            for shards in (1, 4):
                cold, warm, used, correct = timed(
                    cluster.address, onnx, images, labels, shards, args.repeat
                )
                figures[(nodes, shards)] = warm
                print(
                    f"  {nodes} node(s) x 1 CPU, {shards} shard(s): cold {cold:.2f} s, warm "
                    f"{warm:.2f} s ({len(labels) / warm:,.0f} images/s); shards ran on {used} "
                    f"node(s); {correct} correct"
                )
    finally:
        cluster.shutdown()
    print(
        f"  4 shards, warm: 2 nodes take {figures[(2, 4)] / figures[(1, 4)]:.2f}x the time of "
        f"1 node ({figures[(1, 4)]:.2f} s -> {figures[(2, 4)]:.2f} s)"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

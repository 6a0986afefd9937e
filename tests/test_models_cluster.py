"""Every built-in model through the real CLI on a cluster: on two nodes with `--address
HOST:PORT`, and through the Jobs API of a running head (`--address http://HOST:PORT`).

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_models_cluster.py -q

Each model trains on the node that declares a GPU (the CPU head declares none, so only
that node can take the training task; without CUDA it trains there on the CPU), then
evaluates at 1, 3 and 4 shards with the same counts, accuracy and sample, the shards of 3
and 4 spread over both nodes. `show`, `compare` (two models side by side) and `report`
read the store the cluster wrote.

A CNN epoch over the 60,000 images takes 25-45 s on a small CPU, and every command here
is a new driver with new Ray workers, so the data is small: the first 1,000 training
images (one epoch: 10 steps of 100) and the first 2,000 test images (cnn-deep's pass over
all 10,000 takes about 7 s of CPU, three times per model). They are real MNIST images in
a `--data-dir` of their own, under Fashion-MNIST's file names: a slice of MNIST's files
fails their published md5 sums (as it should), Fashion-MNIST's files have none to fail.
So these runs say `--dataset fashion-mnist`; what they check is where things run and
that the counts agree, not the course's accuracies (tests/test_cli_models.py and
tests/test_evaluate.py check those on the whole data set).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from conftest import client_env, mnist_ray, write_idx
from test_faults import LOOPBACK_ONLY, MNIST_RAY, loopback_cluster

from mnist_ray.model import list_models

MODELS = ["softmax", "mlp", "mlp-xavier", "mlp-deep", "mlp-dropout", "cnn", "cnn-deep"]
TRAIN_IMAGES, TEST_IMAGES = 1_000, 2_000
SHARDS = (1, 3, 4)
# what must not change with the shard count: the evaluation row's outcome columns
SAME = (
    "correct",
    "total",
    "accuracy",
    "per_class_accuracy",
    "confusion",
    "sample_index",
    "sample_label",
    "sample_prediction",
    "sample_probabilities",
    "sample_pixels",
)


def test_the_models_here_are_the_built_in_models():
    assert list_models() == MODELS  # a new built-in model is tested here too, or this fails


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, mnist_train, mnist_test) -> Path:
    """A --data-dir with the first 1,000 training and 2,000 test images (see the top)."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "FashionMNIST" / "raw"
    for prefix, split, n in (
        ("train", mnist_train, TRAIN_IMAGES),
        ("t10k", mnist_test, TEST_IMAGES),
    ):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", split.images[:n])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", split.labels[:n])
    return root


def data_args(small_data: Path) -> list[str]:
    return ["--data-dir", str(small_data)]


def outcome(evaluation: dict) -> dict:
    return {key: evaluation[key] for key in SAME}


# ---- two nodes, --address HOST:PORT -----------------------------------------------------------


class TwoNodes:
    """A CPU head (2 CPUs) and a node declaring 1 CPU and 1 GPU (ray.cluster_utils.Cluster,
    127.0.0.1 only); `mnist-ray` runs as a subprocess with `--address HOST:PORT`, one
    store for the module, each model trained once."""

    def __init__(self, head, gpu, store: Path, data: Path):
        self.address, self.store, self.data = head.address, store, data
        self.head_id, self.gpu_id = head.head_node.node_id, gpu.node_id
        self.runs: dict[str, dict] = {}
        self.evaluations: dict[tuple[str, int], dict] = {}

    def cli(self, *args: str, address: bool = True) -> dict:
        """`mnist-ray ARGS --store S --json` (and --address): its one JSON document."""
        where = ["--address", self.address] if address else []
        got = subprocess.run(
            [*MNIST_RAY, *args, "--store", str(self.store), "--json", *where],
            env=os.environ | LOOPBACK_ONLY,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert got.returncode == 0, got.stderr[-3000:]
        return json.loads(got.stdout)

    def train(self, model: str) -> dict:
        if model not in self.runs:
            self.runs[model] = self.cli(
                "submit", "train", "--model", model, "--epochs", "1",
                "--dataset", "fashion-mnist", *data_args(self.data),
            )  # fmt: skip
        return self.runs[model]

    def evaluate(self, model: str, shards: int) -> dict:
        run_id = self.train(model)["run_id"]
        if (model, shards) not in self.evaluations:
            self.evaluations[model, shards] = self.cli(
                "evaluate", "--run", run_id, "--shards", str(shards), *data_args(self.data)
            )
        return self.evaluations[model, shards]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, small_data):
    with loopback_cluster({}, gpu_node={"num_cpus": 1, "num_gpus": 1}) as (head, gpu):
        yield TwoNodes(head, gpu, tmp_path_factory.mktemp("store"), small_data)


@pytest.mark.parametrize("model", MODELS)
def test_a_model_trains_on_the_gpu_node_and_evaluates_alike_on_1_3_4_shards(two_nodes, model):
    run = two_nodes.train(model)
    assert (run["model"], run["epochs"], run["dataset"]) == (model, 1, "fashion-mnist")
    assert run["node_id"] == two_nodes.gpu_id and run["gpu_ids"] == [0]  # the GPU node's task
    assert len(run["epoch_costs"]) == 1 and math.isfinite(run["epoch_costs"][0])

    evaluations = {shards: two_nodes.evaluate(model, shards) for shards in SHARDS}
    one = evaluations[1]
    assert one["run_id"] == run["run_id"] and one["total"] == TEST_IMAGES
    assert one["correct"] > TEST_IMAGES // 10  # its trained weights, better than chance
    for shards, evaluation in evaluations.items():
        assert evaluation["shards"] == shards
        assert outcome(evaluation) == outcome(one), shards
    assert len(one["node_ids"]) == 1
    both = sorted([two_nodes.head_id, two_nodes.gpu_id])
    assert evaluations[3]["node_ids"] == evaluations[4]["node_ids"] == both


def test_show_compare_and_report_read_what_the_cluster_wrote(two_nodes, tmp_path):
    softmax, cnn = two_nodes.train("softmax"), two_nodes.train("cnn")
    evaluation = two_nodes.evaluate("cnn", 4)

    shown = two_nodes.cli("show", evaluation["eval_id"], address=False)
    assert shown["eval_id"] == evaluation["eval_id"] and shown["run_id"] == cnn["run_id"]
    assert outcome(shown) == outcome(evaluation)

    compared = two_nodes.cli("compare", softmax["run_id"], cnn["run_id"], address=False)
    assert [r["run_id"] for r in compared["runs"]] == [softmax["run_id"], cnn["run_id"]]
    assert "model" in compared["differ"], compared["differ"]
    assert [r["model"] for r in compared["runs"]] == ["softmax", "cnn"]

    page = tmp_path / "report.html"
    got = subprocess.run(
        [*MNIST_RAY, "report", softmax["run_id"], cnn["run_id"], "--out", str(page)]
        + ["--store", str(two_nodes.store)],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    html = page.read_text()
    assert softmax["run_id"] in html and cnn["run_id"] in html
    assert ">softmax<" in html and ">cnn<" in html  # each run's model, in a cell of its own


# ---- through the Jobs API of a running head ---------------------------------------------------


@pytest.mark.parametrize("model", ["softmax", "cnn"])
def test_a_model_trains_and_evaluates_through_the_jobs_api(
    ray_cli_cluster, small_data, tmp_path, model
):
    """The head's Jobs API (the cluster of tests/test_cluster_jobs.py: a CPU head and a
    node declaring a GPU, token auth); the store an absolute path both nodes see."""
    cluster, gpu_node_id = ray_cli_cluster
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    base = ["--address", cluster.dashboard, "--store", str(tmp_path / "store"), "--json"]
    base += data_args(small_data)

    def cli(*args: str) -> dict:
        got = mnist_ray([*args, *base], env)
        assert got.returncode == 0, got.stderr[-3000:]
        return json.loads(got.stdout)

    run = cli("submit", "train", "--model", model, "--epochs", "1", "--dataset", "fashion-mnist")
    assert (run["model"], run["node_id"], run["gpu_ids"]) == (model, gpu_node_id, [0])
    evaluations = {s: cli("evaluate", "--shards", str(s)) for s in SHARDS}
    assert all(e["run_id"] == run["run_id"] for e in evaluations.values())
    assert evaluations[1]["total"] == TEST_IMAGES
    assert outcome(evaluations[3]) == outcome(evaluations[4]) == outcome(evaluations[1])
    assert len(evaluations[4]["node_ids"]) == 2  # the head's CPU and the GPU node's

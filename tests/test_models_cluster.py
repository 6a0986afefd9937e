"""Every built-in model through the real CLI on a two-node cluster, both ways a user has:
a driver here with `--address HOST:PORT`, and a job on the head through its Jobs API
(`--address http://HOST:PORT`).

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_models_cluster.py -q

The cluster is conftest's `ray_cli_cluster` (the one tests/test_cluster_jobs.py uses): a
head and a second node started with `ray start` on 127.0.0.1, one CPU each, the second
declaring one GPU, token auth on. One cluster serves both ways, so the suite starts it
once. Each model trains on the node that declares the GPU (the head declares none, so only
that node can take the training task; without CUDA it trains there on the CPU), then
evaluates at 1, 3 and 4 shards with the same counts, accuracy and sample, on the
cluster's nodes. All seven models go the HOST:PORT way,
and the Jobs API way too, there at 1 and 4 shards (a job costs seconds more than a
driver). `show`, `compare` (two models side by side) and `report` read the store the
cluster wrote. All seven also go the embedded way, through the CLI in this process on the
session's local Ray, at 1, 3 and 4 shards.

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
from pathlib import Path

import pytest
from conftest import client_env, ensure_ray, mnist_ray, write_idx
from typer.testing import CliRunner

from mnist_ray.cli import app

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process

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
    got = CliRunner().invoke(app, ["models", "--json"])
    assert got.exit_code == 0, got.output
    # a new built-in model is tested here too, or this fails
    assert [m["name"] for m in json.loads(got.stdout)] == MODELS


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


def outcome(evaluation: dict) -> dict:
    return {key: evaluation[key] for key in SAME}


# ---- the cluster, and the CLI against it --------------------------------------------------------


class Models:
    """`mnist-ray` as a subprocess against one address of the cluster, with a store of its
    own (an absolute path: both nodes see it); each model trained once, each evaluation
    made once, for the tests after to reuse."""

    def __init__(self, cluster, gpu_node_id: str, address: str, folder: Path, data: Path):
        self.address, self.store, self.data = address, folder / "store", data
        self.gpu_node_id = gpu_node_id
        self.nodes = sorted(n["node_id"] for n in cluster.nodes())
        self.env = client_env(folder, RAY_AUTH_TOKEN=cluster.token)
        self.runs: dict[str, dict] = {}
        self.evaluations: dict[tuple[str, int], dict] = {}

    def cli(self, *args: str, ray: bool = True) -> dict:
        """`mnist-ray ARGS --store S --json` (with --address when it uses Ray): the one JSON
        document it prints."""
        where = ["--address", self.address] if ray else []
        got = mnist_ray([*args, "--store", str(self.store), "--json", *where], self.env)
        assert got.returncode == 0, got.stderr[-3000:]
        return json.loads(got.stdout)

    def train(self, model: str) -> dict:
        if model not in self.runs:
            self.runs[model] = self.cli(
                "submit", "train", "--model", model, "--epochs", "1",
                "--dataset", "fashion-mnist", "--data-dir", str(self.data),
            )  # fmt: skip
        return self.runs[model]

    def evaluate(self, model: str, shards: int) -> dict:
        run_id = self.train(model)["run_id"]
        if (model, shards) not in self.evaluations:
            self.evaluations[model, shards] = self.cli(
                "evaluate", "--run", run_id, "--shards", str(shards), "--data-dir", str(self.data)
            )
        return self.evaluations[model, shards]


@pytest.fixture(scope="module")
def via_gcs(ray_cli_cluster, small_data, tmp_path_factory) -> Models:
    """A driver here: --address HOST:PORT, the head's GCS."""
    cluster, gpu_node_id = ray_cli_cluster
    folder = tmp_path_factory.mktemp("via-gcs")
    return Models(cluster, gpu_node_id, cluster.gcs, folder, small_data)


@pytest.fixture(scope="module")
def via_jobs(ray_cli_cluster, small_data, tmp_path_factory) -> Models:
    """A job on the head: --address http://HOST:PORT, the head's Jobs API."""
    cluster, gpu_node_id = ray_cli_cluster
    folder = tmp_path_factory.mktemp("via-jobs")
    return Models(cluster, gpu_node_id, cluster.dashboard, folder, small_data)


def trains_on_the_gpu_node_and_evaluates_alike(models: Models, model: str, shards=SHARDS):
    run = models.train(model)
    assert (run["model"], run["epochs"], run["dataset"]) == (model, 1, "fashion-mnist")
    assert run["node_id"] == models.gpu_node_id and run["gpu_ids"] == [0]  # the GPU's node
    assert len(run["epoch_costs"]) == 1 and math.isfinite(run["epoch_costs"][0])

    evaluations = {n: models.evaluate(model, n) for n in shards}
    one = evaluations[1]
    assert one["run_id"] == run["run_id"] and one["total"] == TEST_IMAGES
    assert one["correct"] > TEST_IMAGES // 10  # its trained weights, better than chance
    for n, evaluation in evaluations.items():
        assert evaluation["shards"] == n
        assert outcome(evaluation) == outcome(one), n
    assert len(one["node_ids"]) == 1
    for n in shards[1:]:
        # On the cluster's nodes, SPREAD over those Ray sees free: a shard of these 500 to
        # 667 images takes milliseconds in ONNX Runtime, so one node may run them all
        # before the other's worker has started (test_node_lost_during_evaluation sees a
        # shard start on a second node; bench/bench_nodes.py measures the spread).
        assert set(evaluations[n]["node_ids"]) <= set(models.nodes), n


@pytest.mark.parametrize("model", MODELS)
def test_a_model_trains_on_the_gpu_node_and_evaluates_alike_via_host_port(via_gcs, model):
    trains_on_the_gpu_node_and_evaluates_alike(via_gcs, model)


@pytest.mark.parametrize("model", MODELS)
def test_a_model_trains_on_the_gpu_node_and_evaluates_alike_via_the_jobs_api(via_jobs, model):
    """1 and 4 shards: each command is a job here, several seconds more than a driver, and
    the job's driver on the head runs the same code as one here (3 shards: above)."""
    trains_on_the_gpu_node_and_evaluates_alike(via_jobs, model, shards=(1, 4))


@pytest.mark.parametrize("model", MODELS)
def test_a_model_trains_and_evaluates_alike_embedded(small_data, tmp_path, model):
    """The laptop's way: no --address, the CLI in this process on the session's Ray."""
    ensure_ray()
    where = ["--store", str(tmp_path), "--data-dir", str(small_data), "--json"]

    def cli(*args: str) -> dict:
        got = CliRunner().invoke(app, [*args, *where], catch_exceptions=False)
        assert got.exit_code == 0, got.output[-3000:]
        return json.loads(got.stdout)

    run = cli("submit", "train", "--model", model, "--epochs", "1", "--dataset", "fashion-mnist")
    assert (run["model"], run["status"], len(run["epoch_costs"])) == (model, "finished", 1)
    evaluations = [cli("evaluate", "--run", run["run_id"], "--shards", str(n)) for n in SHARDS]
    assert all(e["run_id"] == run["run_id"] and e["total"] == TEST_IMAGES for e in evaluations)
    assert evaluations[0]["correct"] > TEST_IMAGES // 10  # trained, better than chance
    assert [outcome(e) for e in evaluations] == [outcome(evaluations[0])] * len(SHARDS)


def test_show_compare_and_report_read_what_the_cluster_wrote(via_gcs, tmp_path):
    softmax, cnn = via_gcs.train("softmax"), via_gcs.train("cnn")
    evaluation = via_gcs.evaluate("cnn", 4)

    shown = via_gcs.cli("show", evaluation["eval_id"], ray=False)
    assert shown["eval_id"] == evaluation["eval_id"] and shown["run_id"] == cnn["run_id"]
    assert outcome(shown) == outcome(evaluation)

    compared = via_gcs.cli("compare", softmax["run_id"], cnn["run_id"], ray=False)
    assert [r["run_id"] for r in compared["runs"]] == [softmax["run_id"], cnn["run_id"]]
    assert "model" in compared["differ"], compared["differ"]
    assert [r["model"] for r in compared["runs"]] == ["softmax", "cnn"]

    page = tmp_path / "report.html"
    args = ["report", softmax["run_id"], cnn["run_id"], "--out", str(page)]
    got = mnist_ray([*args, "--store", str(via_gcs.store)], via_gcs.env)
    assert got.returncode == 0, got.stderr[-3000:]
    html = page.read_text()
    assert softmax["run_id"] in html and cnn["run_id"] in html
    assert ">softmax<" in html and ">cnn<" in html  # each run's model, in a cell of its own

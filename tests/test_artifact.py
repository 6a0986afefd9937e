"""The exported model the shards score with (artifact.py): the module's own forward in
ONNX Runtime, agreeing with torch for every built-in model, the same for every shard
count, refused when changed, not made for a user's model; older runs still evaluate in
torch, and each evaluation row says what scored it.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_artifact.py -q
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import ensure_ray, stored_run
from typer.testing import CliRunner

from mnist_ray import artifact
from mnist_ray.cli import app
from mnist_ray.evaluate import evaluate_shard, logits, merge, shard_bounds
from mnist_ray.model import get_model, list_models
from mnist_ray.query import read_rows
from mnist_ray.store import Store

runner = CliRunner()


def fresh_weights(name: str) -> dict[str, np.ndarray]:
    torch.manual_seed(11)
    return {k: v.numpy() for k, v in get_model(name).state_dict().items()}


def test_the_tutorial_run_scores_as_in_torch(tutorial_run, mnist_test):
    """The classic figures through the exported graph: 9226 correct, the sample's 0.673."""
    images, labels = mnist_test
    weights = tutorial_run.weights
    onnx = artifact.export("softmax", weights)
    ours, torchs = logits(None, images, onnx=onnx), logits(weights, images, model="softmax")
    assert np.array_equal(ours.argmax(1), torchs.argmax(1))
    assert np.abs(ours - torchs).max() < 1e-4  # float32 sums in another order, no more
    got = merge([evaluate_shard(None, images, labels, sample=3757, onnx=onnx)])
    assert got["correct"] == 9226 and got["engine"] == artifact.engine()
    s = got["sample"]
    assert (s["label"], s["prediction"], round(s["probabilities"][3], 3)) == (8, 3, 0.673)


@pytest.mark.parametrize("name", list_models())
def test_every_built_in_model_scores_as_its_torch_forward(name, mnist_test):
    images = mnist_test[0][:1000]
    weights = fresh_weights(name)
    onnx = artifact.export(name, weights)
    assert onnx is not None, f"{name}: not exported (export() keeps a failure quiet)"
    ours = logits(None, images, onnx=onnx)
    torchs = logits(weights, images, model=name)
    assert ours.shape == torchs.shape == (1000, 10) and ours.dtype == np.float32
    assert np.allclose(ours, torchs, rtol=1e-4, atol=1e-5), np.abs(ours - torchs).max()


def test_every_shard_count_gives_the_same_result(mnist_test):
    images, labels = mnist_test
    onnx = artifact.export("cnn", fresh_weights("cnn"))
    results = {
        shards: merge(
            [
                evaluate_shard(None, images, labels, a, b, sample=3757, onnx=onnx)
                for a, b in shard_bounds(len(labels), shards)
            ]
        )
        for shards in (1, 3, 4)
    }
    assert results[3] == results[1] and results[4] == results[1]


def test_a_short_last_batch_is_scored_as_in_the_whole_set(mnist_test):
    """250 images: the last micro-batch holds 50, padded to the graph's fixed 100."""
    images = mnist_test[0][:250]
    onnx = artifact.export("mlp", fresh_weights("mlp"))
    whole = logits(None, images, onnx=onnx)
    for start, stop in ((200, 250), (199, 201), (249, 250), (0, 250)):
        assert np.array_equal(logits(None, images, start, stop, onnx=onnx), whole[start:stop])


# A user's model is exported when its graph scores as its torch forward does, and not
# when it branches on its input: tests/test_training_options.py
# (test_a_users_model_exports_to_onnx_only_when_its_scores_are_torchs).


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.cluster
def test_evaluate_uses_the_export_refuses_a_changed_one_and_reads_older_runs(tmp_path):
    ensure_ray()
    where = str(tmp_path / "store")
    got = cli("submit", "train", "--epochs", "1", "--store", where, "--json")
    assert got.exit_code == 0, got.output
    run = json.loads(got.stdout)
    store = Store(where)
    path = tmp_path / "store" / "weights" / f"{run['run_id']}.onnx"
    assert run["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.read_artifact(run) == path.read_bytes()

    got = cli("evaluate", "--shards", "3", "--store", where, "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["engine"] == artifact.engine()

    # A run from before the export (no onnx_sha256): its shards use torch.
    older = stored_run(store)
    assert older["onnx_sha256"] is None
    got = cli("evaluate", "--run", older["run_id"], "--store", where, "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["engine"] == f"torch {torch.__version__}"

    # A changed export, or changed weights though the export scores, is refused in one
    # line naming the file; nothing is written.
    before = len(read_rows(store, "evaluations")[0])
    for changed in (path.with_suffix(".safetensors"), path):
        kept = changed.read_bytes()
        changed.write_bytes(kept + b"\0")
        got = cli("evaluate", "--run", run["run_id"], "--store", where)
        changed.write_bytes(kept)
        lines = got.output.strip().splitlines()
        assert got.exit_code == 1 and len(lines) == 1, got.output
        assert str(changed) in lines[0] and "does not match run" in lines[0], lines
    assert len(read_rows(store, "evaluations")[0]) == before

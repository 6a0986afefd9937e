"""Evaluation: sharding covers the test set once, every shard count gives the same answer.

The expected accuracy and sample are the classic program's (tests/reference.py, with the
test pixels scaled as training scales them; docs/reference.md).

    PYTHONPATH=. python -m pytest tests/test_evaluate.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from mnist_ray.evaluate import evaluate_shard, merge, sample_index, shard_bounds


@pytest.fixture(scope="session")
def tutorial_weights(tutorial_run):
    return tutorial_run.weights


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7, 9999, 10000])
def test_shards_cover_every_image_exactly_once(shards):
    bounds = shard_bounds(10000, shards)
    covered = np.concatenate([np.arange(a, b) for a, b in bounds])
    assert np.array_equal(covered, np.arange(10000))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shards", [0, 10001])
def test_shard_count_out_of_range_is_refused(shards):
    with pytest.raises(ValueError):
        shard_bounds(10000, shards)


def test_tutorial_accuracy_and_sample(tutorial_weights, mnist_test):
    images, labels = mnist_test
    sample = sample_index(777, len(labels))
    result = merge([evaluate_shard(tutorial_weights, images, labels, sample=sample)])
    assert sample == ref.SAMPLE_INDEX
    assert result["correct"] == ref.SCALED_CORRECT
    assert result["accuracy"] == pytest.approx(ref.SCALED_ACCURACY, abs=0)
    s = result["sample"]
    assert (s["index"], s["label"], s["prediction"]) == (
        ref.SAMPLE_INDEX, ref.SAMPLE_LABEL, ref.SAMPLE_PREDICTION
    )  # fmt: skip
    for digit, p in ref.SAMPLE_SOFTMAX.items():
        assert round(s["probabilities"][digit], 3) == p, digit
    assert np.array_equal(np.asarray(s["pixels"]).reshape(28, 28), images[ref.SAMPLE_INDEX])
    confusion = np.asarray(result["confusion"]).reshape(10, 10)
    assert confusion.sum(axis=1).tolist() == np.bincount(labels).tolist()


def test_every_shard_count_gives_identical_counts(tutorial_weights, mnist_test):
    images, labels = mnist_test
    reference = merge([evaluate_shard(tutorial_weights, images, labels, sample=ref.SAMPLE_INDEX)])
    for shards in (2, 3, 4, 7, 13, 64, 1000, 10000):
        parts = [
            evaluate_shard(tutorial_weights, images, labels, a, b, sample=ref.SAMPLE_INDEX)
            for a, b in shard_bounds(len(labels), shards)
        ]
        assert merge(parts) == reference, shards


def test_merge_refuses_a_missing_shard(tutorial_weights, mnist_test):
    images, labels = mnist_test
    parts = [
        evaluate_shard(tutorial_weights, images, labels, a, b) for a, b in shard_bounds(10000, 4)
    ]
    with pytest.raises(ValueError, match="gap or overlap"):
        merge(parts[:1] + parts[2:])


def test_the_first_25_misclassified_images_for_any_shard_count(tutorial_weights, mnist_test):
    from mnist_ray.evaluate import logits

    images, labels = mnist_test
    wrong = np.nonzero(logits(tutorial_weights, images).argmax(axis=1) != labels)[0][:25]
    for shards in (1, 3, 7, 10000):
        parts = [
            evaluate_shard(tutorial_weights, images, labels, a, b)
            for a, b in shard_bounds(len(labels), shards)
        ]
        kept = merge(parts)["misclassified"]
        assert [m["index"] for m in kept] == wrong.tolist(), shards
        first = kept[0]
        assert first["label"] == labels[first["index"]] != first["prediction"]
        assert np.array_equal(np.asarray(first["pixels"]).reshape(28, 28), images[first["index"]])


@pytest.fixture(scope="module")
def cnn_weights():
    """Random-init CNN weights: enough to give scores whose float32 sums could depend on
    how many images share a forward (a trained CNN isn't needed for that)."""
    import torch

    from mnist_ray.model import get_model

    torch.manual_seed(11)
    return {k: v.numpy() for k, v in get_model("cnn").state_dict().items()}


def test_a_cnn_gives_identical_results_for_1_3_and_4_shards(cnn_weights, mnist_test):
    """Shards of 3334 and 2500 images start inside the fixed 100-image micro-batches;
    every count, every confusion cell and the sample must still be the 1-shard ones."""
    images, labels = mnist_test
    results = {
        shards: merge(
            [
                evaluate_shard(cnn_weights, images, labels, a, b, sample=3757, model="cnn")
                for a, b in shard_bounds(len(labels), shards)
            ]
        )
        for shards in (1, 3, 4)
    }
    assert results[3] == results[1] and results[4] == results[1]
    assert results[1]["total"] == 10000 and results[1]["sample"]["index"] == 3757


def test_each_image_is_scored_in_its_aligned_micro_batch(cnn_weights, mnist_test):
    """A shard's scores are exactly the rows of the whole set's, wherever it starts."""
    from mnist_ray.evaluate import MICRO_BATCH, logits

    images, _ = mnist_test
    whole = logits(cnn_weights, images[:400], model="cnn")
    assert MICRO_BATCH == 100 and whole.shape == (400, 10)
    for start, stop in ((0, 400), (150, 250), (99, 101), (333, 334), (200, 200)):
        part = logits(cnn_weights, images[:400], start, stop, model="cnn")
        assert np.array_equal(part, whole[start:stop]), (start, stop)

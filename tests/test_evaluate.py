"""Evaluation: sharding covers the test set once, every shard count gives the same answer."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_ray.evaluate import evaluate_shard, merge, sample_index, shard_bounds


@pytest.fixture(scope="session")
def tutorial_weights(mnist_train):
    import torch

    from mnist_ray.config import TrainConfig
    from mnist_ray.train import train

    return train(TrainConfig(), *mnist_train, torch.device("cpu"), log=lambda _: None).weights


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
    assert sample == 3757
    assert result["correct"] == 9226 and result["accuracy"] == pytest.approx(0.9226, abs=0)
    s = result["sample"]
    assert (s["index"], s["label"], s["prediction"]) == (3757, 8, 3)
    assert round(s["probabilities"][3], 3) == 0.673 and round(s["probabilities"][8], 3) == 0.116
    assert np.array_equal(np.asarray(s["pixels"]).reshape(28, 28), images[3757])
    confusion = np.asarray(result["confusion"]).reshape(10, 10)
    assert confusion.sum(axis=1).tolist() == np.bincount(labels).tolist()


def test_every_shard_count_gives_identical_counts(tutorial_weights, mnist_test):
    images, labels = mnist_test
    reference = merge([evaluate_shard(tutorial_weights, images, labels, sample=3757)])
    for shards in (2, 3, 4, 7, 13, 64, 1000, 10000):
        parts = [
            evaluate_shard(tutorial_weights, images, labels, a, b, sample=3757)
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

"""Each stored run's test accuracy two ways: ours (test pixels scaled to 0..1 as training
scaled them) and the labs' own figure (pixels fed UNSCALED, 0..255), from the stored weights.

    MNIST_RAY_DATA=DIR python bench/lab_accuracy.py --store /work/bench-store          # latest run of each model
    MNIST_RAY_DATA=DIR python bench/lab_accuracy.py --store STORE --run RUN --run RUN  # these runs

Every lab tests the way the tutorial did: `mnist_test.test_data.view(len(mnist_test), 1,
28, 28).float()` (the MLP labs `.view(-1, 28 * 28)`), without the `/ 255` that ToTensor
applied in training, all 10,000 images in one forward, in eval mode. That figure is what
the labs print; ours is what `mnist-ray evaluate` stores (its forward, micro-batches of
100, pixels / 255). Prints one JSON object per run: its model, threads, last epoch cost,
train seconds, both accuracies, and the stored evaluation's accuracy when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from mnist_ray.config import IMAGE_SHAPE
from mnist_ray.data import load
from mnist_ray.evaluate import evaluate_shard
from mnist_ray.model import weight_shapes, with_weights
from mnist_ray.query import find_run, read_rows
from mnist_ray.store import Store


def lab_accuracy(model: str, weights: dict, images, labels) -> float:
    """The labs' test: unscaled pixels, one forward over the whole test set, eval mode."""
    module = with_weights(model, weights)  # eval mode: no dropout, as the labs test
    with torch.no_grad():
        x = torch.from_numpy(images).view(len(images), *IMAGE_SHAPE).float()  # no / 255
        prediction = module(x)
        correct = torch.argmax(prediction, 1) == torch.from_numpy(labels).long()
        return correct.float().mean().item()


def figures(store: Store, run: dict, images, labels, evaluations: list[dict]) -> dict:
    weights = store.read_weights(run, weight_shapes(run["model"]))
    ours = evaluate_shard(weights, images, labels, model=run["model"])  # pixels / 255
    stored = [e["accuracy"] for e in evaluations if e["run_id"] == run["run_id"]]
    return {
        "run_id": run["run_id"],
        "model": run["model"],
        "optimizer": run.get("optimizer"),
        "lr": run["lr"],
        "epochs": run["epochs"],
        "threads": run.get("threads"),
        "last_cost": run["epoch_costs"][-1],
        "train_seconds": run["train_seconds"],
        "accuracy_scaled": ours["correct"] / ours["total"],
        "accuracy_stored": stored[-1] if stored else None,
        "accuracy_lab_unscaled": lab_accuracy(run["model"], weights, images, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", action="append", help="a run id or prefix (repeatable)")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_RAY_DATA"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("set --data-dir or MNIST_RAY_DATA to the folder holding MNIST/raw/")
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    runs, _ = read_rows(store, "runs")
    evaluations, _ = read_rows(store, "evaluations")
    if args.run:
        chosen = [find_run(store, r, runs) for r in args.run]
    else:  # the latest run of each model, in the order they were trained
        latest = {r["model"]: r for r in runs}
        chosen = sorted(latest.values(), key=lambda r: r["created_at"])
    images, labels = load("mnist", "test", args.data_dir)
    for run in chosen:
        print(json.dumps(figures(store, run, images, labels, evaluations)), flush=True)


if __name__ == "__main__":
    main()

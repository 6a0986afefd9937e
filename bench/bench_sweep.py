"""Sweep benchmark: a 12-trial grid (3 learning rates x 4 seeds, 15 epochs, CPU trials of
1 CPU) through `mnist-ray sweep` on an embedded local Ray, against its ideal on this machine.

    python bench/bench_sweep.py                   # the issue's grid, then the goal check
    python bench/bench_sweep.py --epochs 3        # shorter
    python bench/bench_sweep.py --baseline        # also the same 12 trainings as plain Ray tasks

The ideal is what perfect packing gives: the trials' summed training time divided by the
slots (CPUs), plus the one Ray start the command pays (the sweep's own stderr line says
how long). The goal is a wall time at most 1.25x that. Packing efficiency is the summed
training time over (wall x slots). Peak memory is each trial process's peak RSS, from its
run row. With --baseline the same trainings run as `submit train`'s Ray task, two at a
time, in one embedded Ray: the cost of Tune itself, beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.25  # the bound on wall / ideal


def sweep(args, store: str) -> dict:
    """The real command line, in its own process, timed from outside."""
    command = [
        sys.executable, "-c", "from mnist_ray.cli import app; app()", "sweep",
        "--lr", args.lr, "--seed", args.seed, "--epochs", str(args.epochs),
        "--gpus-per-trial", "0", "--cpus-per-trial", "1", "--store", store, "--json",
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"mnist-ray sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    start = re.search(r"Started a local Ray: .*\((\d+\.\d+) s\)", done.stderr)
    summary = json.loads(done.stdout)
    return {"wall": wall, "ray_start": float(start.group(1)), "summary": summary}


def ray_alone() -> float:
    """An embedded Ray started and stopped by a process that does nothing else: the fixed
    cost every mnist-ray command on a local Ray pays, Ray's stop included."""
    code = "from mnist_ray.session import connect\nwith connect(None, log=lambda _: None): pass"
    env = os.environ | {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    return time.perf_counter() - started


def baseline(args) -> float:
    """The same trainings as plain Ray tasks (what `submit train` runs), all submitted at
    once to an embedded Ray; wall time from its start to the last result, its stop included."""
    import ray

    from mnist_ray import cluster, data
    from mnist_ray.config import CHECKPOINT_EVERY, TrainConfig
    from mnist_ray.store import Store

    images, labels = data.load("mnist", "train")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, cluster.connect(None, log=lambda _: None):
        store = Store(tmp)
        x, y = ray.put(images), ray.put(labels)
        streams = [
            cluster.train_task.options(num_returns="streaming").remote(
                TrainConfig(epochs=args.epochs, lr=float(lr), seed=int(seed)).to_dict(),
                x,
                y,
                store.location,
                f"run-{i}",
                False,
                CHECKPOINT_EVERY,
            )
            for i, (lr, seed) in enumerate(
                (lr, seed) for lr in args.lr.split(",") for seed in args.seed.split(",")
            )
        ]
        for stream in streams:  # all submitted first; each yields its epochs, then its outcome
            ray.get(list(stream))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", default="0.01,0.1,0.5", help="learning rates, comma list")
    parser.add_argument("--seed", default="777,1,2,3", help="seeds, comma list")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial")
    parser.add_argument("--slots", type=int, default=os.cpu_count(), help="CPUs the trials share")
    parser.add_argument("--baseline", action="store_true", help="also plain Ray tasks")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        got = sweep(args, f"{tmp}/store")
    trials = got["summary"]["trials"]
    seconds = [t["train_seconds"] for t in trials]
    peaks = [t["peak_rss_mib"] for t in trials]
    summed = sum(seconds)
    ideal = summed / args.slots + got["ray_start"]
    wall = got["wall"]
    print(f"{len(trials)} trials of {args.epochs} epochs, {args.slots} slots (CPU trials, 1 CPU)")
    print(
        f"  trials' training time: sum {summed:.1f} s, each {min(seconds):.2f}..{max(seconds):.2f} s"
    )
    print(f"  one Ray start: {got['ray_start']:.1f} s")
    print(f"  ideal (sum / {args.slots} + Ray start): {ideal:.1f} s")
    print(f"  mnist-ray sweep wall: {wall:.1f} s = {wall / ideal:.2f}x ideal (goal <= {GOAL}x: "
          f"{'met' if wall <= GOAL * ideal else 'NOT met'})")  # fmt: skip
    print(f"  packing efficiency: {summed / (wall * args.slots):.0%} (sum / (wall x slots))")
    print(f"  peak memory per trial process: median {statistics.median(peaks):.0f} MiB, "
          f"max {max(peaks):.0f} MiB")  # fmt: skip
    fixed = ray_alone()
    print(
        f"  a process that only starts and stops an embedded Ray: {fixed:.1f} s; "
        f"wall minus that = {wall - fixed:.1f} s vs sum / {args.slots} = {summed / args.slots:.1f} s"
    )
    if args.baseline:
        plain = baseline(args)
        print(f"  baseline, the same trainings as plain Ray tasks (no Tune): {plain:.1f} s wall")


if __name__ == "__main__":
    main()

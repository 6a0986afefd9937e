"""The tutorial's job against a running head, an earlier commit and this tree side by side.

    MNIST_RAY_DATA=../shared/datasets python bench/bench_head.py            # against 6c7dd36
    MNIST_RAY_DATA=../shared/datasets python bench/bench_head.py --base HEAD~3 --rounds 5

`mnist-ray submit train` and `mnist-ray evaluate --shards 4`, each with `--address` a
running head, as bench/RESULTS.md timed them on 2026-11-27 (commit 6c7dd36). This
machine's speed drifts by 2x between days (the classic loop took 22-24 s then, 49 s on
2026-11-29), so figures from another day can't say whether we got slower: this runs the
earlier commit (a `git worktree`, first on PYTHONPATH for its driver and its head, and
the driver's folder, which Ray puts first on its workers' sys.path) and this tree, each on a head of its own, alternately, and prints the medians
and their ratio. Both train with Ray's one CPU per task, as the CLI's defaults ask.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import cli, running_head  # bench/ is this script's folder, so first on sys.path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "submit train": ["submit", "train"],
    "evaluate --shards 4": ["evaluate", "--shards", "4"],
}


@contextlib.contextmanager
def worktree(commit: str):
    folder = tempfile.mkdtemp(prefix="mrb-base-")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", folder, commit],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", folder], capture_output=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="6c7dd36", help="the earlier commit (default 6c7dd36)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternately")
    args = parser.parse_args()
    data = os.environ.get("MNIST_RAY_DATA")
    if not data:
        sys.exit("set MNIST_RAY_DATA to the folder holding MNIST/raw/")
    env = dict(os.environ, MNIST_RAY_DATA=data)
    times: dict[tuple[str, str], list[float]] = {}
    with worktree(args.base) as base, tempfile.TemporaryDirectory() as stores:
        base_env = dict(env, PYTHONPATH=base)  # its driver and its head's workers
        with (
            running_head(base_env) as (base_at, base_head),
            running_head(env) as (ours_at, ours_head),
        ):
            sides = {args.base: (base_at, base_head, base), "this tree": (ours_at, ours_head, REPO)}
            for round_ in range(args.rounds):
                for side, (address, head_env, folder) in sides.items():
                    store = f"{stores}/{side.replace(' ', '-')}"
                    for what, argv in COMMANDS.items():
                        where = ["--address", address, "--store", store]
                        t, _, row, _ = cli([*argv, *where], head_env, cwd=str(folder))
                        times.setdefault((side, what), []).append(t)
                        detail = (
                            f"cost {row['epoch_costs'][-1]:.9f}"
                            if "epoch_costs" in row
                            else f"accuracy {row['accuracy']:.4f}, sample p {row['sample_probabilities'][3]:.3f}"
                        )
                        print(f"round {round_ + 1} {side:>9}: {what:<20} {t:6.2f} s  ({detail})")
    print()
    for what in COMMANDS:
        base_t = statistics.median(times[(args.base, what)])
        ours_t = statistics.median(times[("this tree", what)])
        print(
            f"{what:<20}: {args.base} {base_t:5.2f} s, this tree {ours_t:5.2f} s (medians of "
            f"{args.rounds}): {ours_t / base_t:.2f}x the time"
        )


if __name__ == "__main__":
    main()

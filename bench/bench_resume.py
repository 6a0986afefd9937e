"""How long `submit train --resume RUN` takes to its first new epoch, against how long a fresh
`submit train` takes to its first epoch: embedded, and against a running head.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python bench/bench_resume.py --repeat 3

Each timing is from the command's start to the line of the epoch on its stderr (softmax,
one CPU thread, `--checkpoint-every 0`). A run to resume is made by starting a long one
and stopping it with Ctrl-C (SIGINT to its process group) after its second epoch: it is
left interrupted with its checkpoints, and the resume's first new epoch is the one after
its newest checkpoint, so both timings hold exactly one epoch of training. The goal: the
resume within 1 s of the fresh start. Prints each timing, then the medians and the
difference per mode.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from killmatrix import Command, Matrix, until  # noqa: E402

EPOCHS = ["--epochs", "40", "--checkpoint-every", "0", "--cpus", "1", "--gpus", "0"]
EPOCH = re.compile(r"^Epoch: (\d+) ")


def first_epoch_after(cmd: Command, after: int, started: float) -> float:
    """Seconds from `started` to the command's first epoch line numbered above `after`."""

    def seen():
        for line in list(cmd.err):
            m = EPOCH.match(line)
            if m and int(m.group(1)) > after:
                return time.monotonic()
        return None

    return until(f"an epoch after {after}", seen, 600, cmd, every=0.005) - started


def timed(args: list[str], env: dict, after: int) -> tuple[float, Command]:
    started = time.monotonic()
    cmd = Command(args, env, "")
    return first_epoch_after(cmd, after, started), cmd


def stop(cmd: Command) -> int:
    os.killpg(cmd.pid, signal.SIGINT)
    return cmd.wait()


def newest_checkpoint(store: Path, run_id: str) -> int:
    names = (store / "checkpoints" / run_id).glob("epoch-*.safetensors")
    return max(int(p.name[6:14]) for p in names)


def one(matrix: Matrix, mode: str, at: list[str], n: int) -> tuple[float, float]:
    folder = matrix.work / f"{mode}-{n}"
    store = folder / "store"
    env = matrix.env(folder, "embedded" if mode == "embedded" else "address")
    base = ["submit", "train", *EPOCHS, *at, "--store", str(store)]
    fresh, cmd = timed(base, env, 0)
    until("a second epoch", lambda: any(line.startswith("Epoch: 0002") for line in cmd.err), 600)
    code = stop(cmd)
    assert code == 130, f"Ctrl-C: exit {code}\n{cmd.said()}"
    run_id = cmd.run_id()
    done = newest_checkpoint(store, run_id)
    resumed, again = timed(
        ["submit", "train", "--resume", run_id, *at, "--store", str(store)], env, done
    )
    stop(again)
    again.end()
    cmd.end()
    print(
        f"{mode:9} fresh {fresh:6.2f} s   resume (from epoch {done}) {resumed:6.2f} s", flush=True
    )
    return fresh, resumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f}; 1 torch thread", flush=True)
    matrix = Matrix(Path(tempfile.mkdtemp(prefix="kmb-", dir="/tmp")), log=print)
    try:
        results = {}
        for mode in ("embedded", "head"):
            at = ["--address", matrix.head.gcs] if mode == "head" else []
            results[mode] = [one(matrix, mode, at, n) for n in range(args.repeat)]
        for mode, pairs in results.items():
            fresh = statistics.median(f for f, _ in pairs)
            resumed = statistics.median(r for _, r in pairs)
            print(
                f"{mode:9} median of {len(pairs)}: fresh {fresh:.2f} s, resume {resumed:.2f} s, "
                f"difference {resumed - fresh:+.2f} s"
            )
    finally:
        matrix.close()


if __name__ == "__main__":
    main()

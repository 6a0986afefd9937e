"""Every built-in model, ours beside its lab's own loop: one epoch each (or the first
--steps steps for the CNNs), in this process, on the CPU, with the same thread count;
the costs must be the same, bit for bit; prints the seconds and the ratio.

    MNIST_RAY_DATA=DIR python bench/bench_models.py                       # 1 thread, CNNs 100 steps
    MNIST_RAY_DATA=DIR python bench/bench_models.py --threads 2 --cnn-steps 600   # whole CNN epochs
    MNIST_RAY_DATA=DIR python bench/bench_models.py --model mlp --model cnn --repeat 3

The lab's side is tests/labs.py (the loop tests/test_labs.py holds ours to):
torchvision's MNIST, ToTensor, DataLoader(shuffle=True, drop_last=True), the lab's model
and optimizer. Ours is mnist_ray.train.Training. Each side's set-up (reading the data,
building the model, the DataLoader) is outside the clock; each side is timed --repeat
times, alternating, from a fresh seed each time, and the ratio uses each side's fastest
(the machine is shared: the minimum is the figure least disturbed by others' work).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from labs import LABS, lab_epoch, lab_setup  # noqa: E402  (tests/ is not a package)

from mnist_ray.config import TrainConfig  # noqa: E402
from mnist_ray.data import load  # noqa: E402
from mnist_ray.train import Training  # noqa: E402

CPU = torch.device("cpu")
FULL_EPOCH = 600  # steps of batch 100 in 60,000 images


def lab_side(data_dir: str, name: str, steps: int) -> tuple[float, list[float]]:
    """Seconds for the lab's loop; its epoch cost (one value) or each step's cost."""
    setup = lab_setup(data_dir, name)
    flatten = not name.startswith("cnn")  # the MLP labs take X.view(-1, 28 * 28)
    started = time.perf_counter()
    avg_cost, costs = lab_epoch(
        setup, flatten=flatten, steps=None if steps == FULL_EPOCH else steps
    )
    seconds = time.perf_counter() - started
    return seconds, [avg_cost.item()] if steps == FULL_EPOCH else costs


def our_side(images, labels, name: str, steps: int, threads: int) -> tuple[float, list[float]]:
    run = Training(
        TrainConfig(epochs=1, model=name), images, labels, CPU, log=lambda _: None, threads=threads
    )
    started = time.perf_counter()
    costs = [next(iter(run)).cost] if steps == FULL_EPOCH else run.first_steps(steps)
    return time.perf_counter() - started, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_RAY_DATA"))
    parser.add_argument("--model", action="append", help="a built-in model (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument(
        "--cnn-steps", type=int, default=100, help="steps for the CNNs (600: a whole epoch)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="times each side is timed")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("set --data-dir or MNIST_RAY_DATA to the folder holding MNIST/raw/")
    names = args.model or list(LABS)
    if unknown := sorted(set(names) - set(LABS)):
        sys.exit(f"--model {unknown[0]}: not a built-in model; choose one of {list(LABS)}")
    torch.set_num_threads(args.threads)
    images, labels = load("mnist", "train", args.data_dir)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) both sides, "
        f"fastest of {args.repeat}, load average {os.getloadavg()[0]:.1f} at the start"
    )
    print("| model | steps | threads | lab loop s | ours s | ratio | costs equal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in names:
        steps = args.cnn_steps if name.startswith("cnn") else FULL_EPOCH
        lab_times, our_times = [], []
        for _ in range(args.repeat):
            t, lab_costs = lab_side(args.data_dir, name, steps)
            lab_times.append(t)
            t, our_costs = our_side(images, labels, name, steps, args.threads)
            our_times.append(t)
            assert torch.get_num_threads() == args.threads
            # The same steps: the epoch's cost as the lab prints it, or every step's cost.
            assert our_costs == lab_costs, (name, our_costs[:3], lab_costs[:3])
        lab_s, our_s = min(lab_times), min(our_times)
        what = "1 epoch" if steps == FULL_EPOCH else f"{steps}"
        print(
            f"| `{name}` | {what} | {args.threads} | {lab_s:.2f} | {our_s:.2f} | "
            f"**{lab_s / our_s:.2f}x** | yes ({len(our_costs)} cost(s)) |",
            flush=True,
        )
        print(
            f"    {name}: lab {', '.join(f'{t:.2f}' for t in lab_times)} s; "
            f"ours {', '.join(f'{t:.2f}' for t in our_times)} s; "
            f"load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()

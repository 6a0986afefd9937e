"""Side-by-side benchmark: the classic tutorial loop against mnist-ray's training, in one
process on the same data, device and thread count; then the CLI end to end.

    python bench/bench.py                    # CPU: 15 epochs each, then the CLI timings
    python bench/bench.py --device cuda      # on a GPU machine
    python bench/bench.py --classic-epochs 3 # shorter: the classic loop's time per epoch x 15
    python bench/bench.py --skip-cli --profile  # and where one epoch of ours spends its time
    python bench/bench.py --model cnn --threads 2   # a lab's model: one epoch each

`--model` takes a built-in model (mnist_ray.model.list_models()); its classic loop is
the lab's own program, as tests/labs.py writes it. Prints each time with the
thread count it ran with, the ratio, and peak memory. MNIST comes from --data-dir or
$MNIST_RAY_DATA (see README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def classic(
    data_dir: str, device: torch.device, epochs: int, name: str = "softmax"
) -> tuple[float, list[float]]:
    """The model's program (tests/labs.py, the loop tests/test_labs.py holds ours to):
    DataLoader over torchvision's MNIST with ToTensor, the lab's model built after the
    seed, its optimizer (SGD lr 0.1 for the tutorial, Adam lr 0.001 from lab 10 on) and
    its loop, `epochs` times."""
    sys.path.insert(0, str(ROOT / "tests"))
    from labs import lab_epoch, lab_setup

    setup = lab_setup(data_dir, name, device=device)
    flatten = not name.startswith("cnn")  # the MLP labs take X.view(-1, 28 * 28)
    _sync(device)
    started = time.perf_counter()
    costs = [lab_epoch(setup, flatten=flatten, device=device)[0].item() for _ in range(epochs)]
    _sync(device)
    return time.perf_counter() - started, costs


def ours(
    data_dir: str, device: torch.device, epochs: int, name: str = "softmax"
) -> tuple[float, list[float], str]:
    from mnist_ray.config import TrainConfig
    from mnist_ray.data import load
    from mnist_ray.train import train

    images, labels = load("mnist", "train", data_dir)
    cfg = TrainConfig(epochs=epochs, model=name)
    result = train(cfg, images, labels, device, log=lambda _: None, threads=torch.get_num_threads())
    _sync(device)
    return result.seconds, result.epoch_costs, result.device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cli(
    args: list[str], env: dict, cwd: str | None = None
) -> tuple[float, float, dict, list[tuple[float, str]]]:
    """Run `mnist-ray ARGS --json` (in `cwd`): seconds, the driver's peak RSS in MiB, the stored row,
    and each stderr line with the second it arrived (where the time goes). The driver's
    peak is read from /proc while it runs (VmHWM only grows): getrusage's figure for a
    child would include this big process, which it was forked from."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["mnist-ray", *args, "--json"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: list[tuple[float, str]] = []
    stdout: list[str] = []  # read as it comes: a row of 100 KB would fill the pipe and stall
    readers = [
        threading.Thread(
            target=lambda: lines.extend((time.perf_counter() - started, ln) for ln in proc.stderr)
        ),
        threading.Thread(target=lambda: stdout.append(proc.stdout.read())),
    ]
    for reader in readers:
        reader.start()
    peak = 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                hwm = [line for line in status if line.startswith("VmHWM:")]
            peak = max(peak, int(hwm[0].split()[1]) / 1024) if hwm else peak
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    for reader in readers:
        reader.join()
    if proc.returncode != 0:
        sys.exit(f"mnist-ray {' '.join(args)} failed:\n{''.join(ln for _, ln in lines)}")
    return elapsed, peak, json.loads(stdout[0]), lines


KEY_LINES = ("Training ", "Evaluating ", "Connecting ", "Connected ", "Epoch: 0001", "Epoch: 0015")
LABELS = {"Epoch: 0001": "epoch 1", "Epoch: 0015": "epoch 15", "Training ": "data read"}
LABELS |= {"Evaluating ": "run and data read", "Connecting ": "connecting"}
LABELS |= {"Connected ": "connected", "Shards done": "all shards"}


def timeline(lines: list[tuple[float, str]], total: float) -> str:
    """Where the seconds went: when each of the driver's milestones reached its stderr."""
    marks = [(t, LABELS[p]) for t, ln in lines for p in KEY_LINES if ln.startswith(p)]
    marks += [(t, LABELS["Shards done"]) for t, ln in lines if ln.startswith("Shards done")][-1:]
    marks.append((total, "exit"))
    return "    " + ", ".join(f"{t:.2f} s {what}" for t, what in marks)


def side_by_side(args, device: torch.device) -> None:
    """The classic loop and ours, in this process, on the same data and device."""
    classic_epochs = args.classic_epochs or args.epochs
    threads = f"{torch.get_num_threads()} threads"  # both loops run with it
    # Ours is short enough to time several times: a shared 2-core VM moves a 1 s figure
    # by a third from one run to the next. The ratio uses the median.
    times = []
    for _ in range(args.repeat):
        ours_s, ours_costs, ours_device = ours(args.data_dir, device, args.epochs, args.model)
        times.append(ours_s)
    ours_s = statistics.median(times)
    if device.type == "cuda":
        ours_peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    classic_s, classic_costs = classic(args.data_dir, device, classic_epochs, args.model)
    scaled = classic_s * args.epochs / classic_epochs
    print(
        f"classic loop : {classic_s:8.2f} s for {classic_epochs} epochs, {threads}"
        + (
            f" (x{args.epochs / classic_epochs:g} = {scaled:.2f} s)"
            if classic_epochs != args.epochs
            else ""
        )
    )
    spread = f" (median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)})"
    print(
        f"mnist-ray    : {ours_s:8.2f} s for {args.epochs} epochs on {ours_device}, {threads}"
        + (spread if len(times) > 1 else "")
    )
    print(f"ratio        : {scaled / ours_s:8.1f}x faster ({threads})")
    n = min(len(ours_costs), len(classic_costs))
    diff = max(abs(a - b) for a, b in zip(ours_costs[:n], classic_costs[:n], strict=False))
    print(
        f"costs        : last {ours_costs[-1]:.9f}; max |ours - classic| over {n} epochs = {diff:.1e}"
    )
    if device.type == "cuda":
        print(
            f"GPU peak mem : mnist-ray {ours_peak:.0f} MiB, classic "
            f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
        )
    else:
        print(
            f"peak RSS     : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB "
            "(this process, both loops)"
        )
    if args.profile:
        profile_one_epoch(args.data_dir, device, args.model)


def profile_one_epoch(data_dir: str, device: torch.device, name: str = "softmax") -> None:
    """Where one epoch of ours spends its time, operation by operation (torch.profiler):
    the matrix products and the batch gather are the arithmetic; the rest is dispatch
    and autograd's bookkeeping."""
    from torch.profiler import ProfilerActivity, profile

    from mnist_ray.config import TrainConfig
    from mnist_ray.data import load
    from mnist_ray.train import Training

    images, labels = load("mnist", "train", data_dir)
    cfg = TrainConfig(epochs=2, model=name)
    run = iter(Training(cfg, images, labels, device, log=lambda _: None))
    next(run)  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        next(run)
        _sync(device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_RAY_DATA"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="softmax", help="a built-in model (default softmax)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 15 for softmax, else 1")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own count")
    parser.add_argument("--classic-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--repeat", type=int, default=3, help="times ours is timed (median)")
    parser.add_argument("--profile", action="store_true", help="ours, one epoch, op by op")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument(
        "--address-only", action="store_true", help="only the timings against a running head"
    )
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("set --data-dir or MNIST_RAY_DATA to the folder holding MNIST/raw/")
    from mnist_ray.model import list_models

    if args.model not in list_models():
        sys.exit(f"--model {args.model}: not a built-in model; choose one of {list_models()}")
    if args.epochs is None:
        args.epochs = 15 if args.model == "softmax" else 1  # a lab's epoch takes a while
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"model {args.model}"
    )

    if not args.address_only:
        side_by_side(args, device)
    if args.skip_cli or not shutil.which("mnist-ray") or args.model != "softmax":
        return  # the CLI trains the default model
    with tempfile.TemporaryDirectory() as store:
        env = dict(os.environ, MNIST_RAY_DATA=args.data_dir)
        if not args.address_only:
            embedded(store, env)
        if shutil.which("ray"):
            against_a_head(store, env)


def embedded(store: str, env: dict) -> None:
    """The CLI end to end, each command starting and stopping a Ray of its own."""
    t, peak, run, lines = cli(["submit", "train", "--store", store], env)
    gpu = f" + {run['gpu_peak_mib']:.0f} MiB GPU" if run.get("gpu_peak_mib") else ""
    print(
        f"mnist-ray submit train       : {t:6.2f} s end to end; training {run['train_seconds']:.2f} s"
        f" on {run['device']}, final cost {run['epoch_costs'][-1]:.9f}\n"
        f"    peak RSS: driver {peak:.0f} MiB, training task {run['peak_rss_mib']:.0f} MiB{gpu}"
    )
    print(timeline(lines, t))
    t, peak, ev, lines = cli(["evaluate", "--shards", "4", "--store", store], env)
    print(
        f"mnist-ray evaluate --shards 4: {t:6.2f} s end to end; accuracy {ev['accuracy']:.4f}, "
        f"sample {ev['sample_index']} label {ev['sample_label']} "
        f"predicted {ev['sample_prediction']}\n"
        f"    peak RSS: driver {peak:.0f} MiB, largest shard task {ev['shard_peak_rss_mib']:.0f} MiB"
    )
    print(timeline(lines, t))
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import ray; ray.init(address='local', include_dashboard=False, "
            "_node_ip_address='127.0.0.1', logging_level=40); ray.shutdown()",
        ],
        env=env,
        capture_output=True,
    )
    print(f"for scale, a bare ray.init() + shutdown: {time.perf_counter() - t0:6.2f} s")


def against_a_head(store: str, env: dict) -> None:
    """The CLI end to end with --address: the way a cluster is normally used."""
    with running_head(env) as (address, head_env):
        where = ["--address", address, "--store", store]
        t, _, run, lines = cli(["submit", "train", *where], head_env)
        print(f"against a running head ({address}):")
        print(
            f"  submit train       : {t:6.2f} s end to end (training {run['train_seconds']:.2f} s)"
        )
        print(timeline(lines, t))
        t, _, ev, lines = cli(["evaluate", "--shards", "4", *where], head_env)
        print(f"  evaluate --shards 4: {t:6.2f} s end to end (accuracy {ev['accuracy']:.4f})")
        print(timeline(lines, t))


@contextlib.contextmanager
def running_head(env: dict):
    """A token-protected Ray head on loopback, started with `ray start` for the timings
    against an existing cluster; its processes are stopped by their temp dir, so no other
    Ray on the machine is touched."""
    token = secrets.token_hex(16)
    temp_dir = tempfile.mkdtemp(prefix="mrb-", dir="/tmp")  # Ray's socket paths must be short
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    head_env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    start = [
        "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
        "--include-dashboard=false", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    try:
        subprocess.run(start, env=head_env, check=True, capture_output=True, timeout=180)
        # A cluster that is already running, as a user meets one: not the first seconds after
        # `ray start` (agents still starting, workers prestarted for the first driver).
        settle = (
            f"import ray; ray.init(address='127.0.0.1:{port}', logging_level=40); ray.shutdown()"
        )
        subprocess.run(
            [sys.executable, "-c", settle], env=head_env, capture_output=True, timeout=120
        )
        time.sleep(5)
        yield f"127.0.0.1:{port}", head_env
    finally:
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if temp_dir.encode() in f.read():
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                continue
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

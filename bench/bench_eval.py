"""Evaluation throughput: a model on the 10,000 test images through Ray (a running head,
1, 2 and 4 shards) beside a plain in-process forward on the same cores, for each engine
a shard can score with (the model's ONNX export in ONNX Runtime, what `evaluate` uses for
a built-in model; its torch forward, for a user's model or an older run); where a Ray
evaluation's seconds go; and the two engines' forward side by side.

    MNIST_RAY_DATA=DIR python bench/bench_eval.py                    # cnn, a head of its own
    MNIST_RAY_DATA=DIR python bench/bench_eval.py --store S --run R  # a stored run's weights

The head is `ray start --head` on loopback in a temp dir, on a free port (bench.py's
running_head), stopped at the end; nothing else on the machine is touched. Each shard
count is timed in a new driver connection (a new Ray job, as each `mnist-ray evaluate`
is: its workers import their engine afresh, "cold") and then again in the same connection
("warm": the workers already hold it). Images/second = 10,000 / the seconds from
submitting the shards to holding the merged counts (evaluate_on_ray itself).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import ray
import torch

from bench import running_head  # bench/ is this script's folder, so first on sys.path
from mnist_ray import artifact
from mnist_ray.cluster import evaluate_on_ray
from mnist_ray.config import IMAGE_SHAPE, MICRO_BATCH
from mnist_ray.data import load
from mnist_ray.evaluate import evaluate_shard, logits, sample_index, shard_bounds
from mnist_ray.model import get_model, weight_shapes
from mnist_ray.session import connect

TOTAL = 10_000


def quiet(_: str) -> None:
    pass


def stored_weights(store: str, run: str | None) -> tuple[str, dict]:
    from mnist_ray.query import find_run
    from mnist_ray.store import Store

    s = Store(store)
    row = find_run(s, run)
    return row["model"], s.read_weights(row, weight_shapes(row["model"]))


def in_process(weights, images, labels, model: str, threads: int, repeat: int, onnx=None) -> float:
    """Seconds for the shard's own forward (evaluate_shard) over all 10,000 images."""
    torch.set_num_threads(threads)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        evaluate_shard(weights, images, labels, model=model, onnx=onnx)
        times.append(time.perf_counter() - started)
    return min(times)


@ray.remote(num_cpus=1)
def timed_shard(boxed: list, start: int, stop: int, sample: int, model: str) -> dict:
    """The shard task's work with a clock at each stage (time.time(): one machine, so the
    driver's and the workers' clocks agree)."""
    entered = time.time()
    w, x, y, onnx = ray.get(boxed[0])  # the object store: zero-copy on one node
    fetched = time.time()
    if onnx is None:  # the first evaluation in a worker pays its engine's import here
        import torch
    else:
        import onnxruntime  # noqa: F401
    imported = time.time()
    part = evaluate_shard(w, x, y, start, stop, sample=sample, model=model, onnx=onnx)
    return {
        "entered": entered,
        "imported": imported,
        "fetched": fetched,
        "done": time.time(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads() if onnx is None else 1,
        "correct": part["correct"],
    }


def breakdown(weights, images, labels, model: str, shards: int, onnx=None) -> list[dict]:
    """One evaluation's stages, shard by shard: waiting for a worker (start, queue),
    fetching the arguments, the engine's import, the forward, and the gather back."""
    boxed = [ray.put((weights, images, labels, onnx))]
    sample = sample_index(777, TOTAL)
    submitted = time.time()
    refs = [timed_shard.remote(boxed, a, b, sample, model) for a, b in shard_bounds(TOTAL, shards)]
    parts = ray.get(refs)
    gathered = time.time()
    for p in parts:
        # A worker that ran an earlier shard of this call: the time before it was queueing.
        before = [q["done"] for q in parts if q["pid"] == p["pid"] and q["done"] <= p["entered"]]
        p["queue"] = max(before, default=submitted) - submitted
        p["wait"] = p["entered"] - submitted - p["queue"]
        p["fetch"] = p["fetched"] - p["entered"]
        p["import"] = p["imported"] - p["fetched"]
        p["compute"] = p["done"] - p["imported"]
    last = max(p["done"] for p in parts)
    print(
        f"    {shards} shards: {gathered - submitted:.2f} s from submit to gathered; "
        f"{sum(p['correct'] for p in parts)} correct; gather after the last shard "
        f"{gathered - last:.3f} s; {len({p['pid'] for p in parts})} worker process(es), "
        f"{parts[0]['threads']} thread(s) each"
    )
    for i, p in enumerate(parts):
        print(
            f"      shard {i}: queued {p['queue']:.2f} s, worker start {p['wait']:.2f} s, "
            f"fetch {p['fetch']:.3f} s, {'torch' if onnx is None else 'onnxruntime'} import "
            f"{p['import']:.2f} s, forward {p['compute']:.2f} s"
        )
    return parts


def through_ray(address: str, weights, images, labels, model: str, repeat: int, onnx) -> dict:
    engine = "torch" if onnx is None else "onnxruntime"
    sample = sample_index(777, TOTAL)
    figures = {}
    for shards in (1, 2, 4):
        with connect(address, log=quiet):  # a new job: fresh workers, as each CLI call
            times = []
            for _ in range(1 + repeat):
                started = time.perf_counter()
                merged = evaluate_on_ray(
                    weights, images, labels, shards, sample, log=quiet, model=model, onnx=onnx
                )
                times.append(time.perf_counter() - started)
        cold, warm = times[0], min(times[1:])
        figures[shards] = (cold, warm)
        print(
            f"  Ray, {engine}, {shards} shard(s): cold {cold:.2f} s ({TOTAL / cold:,.0f} images/s), "
            f"warm {warm:.2f} s ({TOTAL / warm:,.0f} images/s; "
            f"{', '.join(f'{t:.2f}' for t in times[1:])}); accuracy {merged['accuracy']:.4f}",
            flush=True,
        )
    print(f"  where the seconds go, {engine} (a new job, then the same job again):")
    with connect(address, log=quiet):
        breakdown(weights, images, labels, model, 4, onnx)
        breakdown(weights, images, labels, model, 4, onnx)
    return figures


def import_seconds(module: str, env: dict) -> float:
    """A fresh interpreter's `import module`, the cost a fresh shard worker pays."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def onnx_against_torch(weights, images, model: str, repeat: int, onnx: bytes) -> None:
    """The shard's forward (micro-batches of 100, pixels / 255) through ONNX Runtime, as
    `evaluate` scores a built-in model, and through torch, one thread each; the logits
    compared. And torch in oneDNN's preferred layout, channels_last, for scale."""
    import onnxruntime as ort

    from mnist_ray.model import with_weights

    torch.set_num_threads(1)
    last = with_weights(model, weights).to(memory_format=torch.channels_last)

    def channels_last_logits() -> np.ndarray:
        out = []
        with torch.no_grad():
            for a in range(0, TOTAL, MICRO_BATCH):
                x = torch.from_numpy(images[a : a + MICRO_BATCH]).view(-1, *IMAGE_SHAPE) / 255
                out.append(last(x.contiguous(memory_format=torch.channels_last)).numpy())
        return np.concatenate(out)

    ort_times, torch_times, last_times = [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        z_ort = logits(None, images, onnx=onnx)
        ort_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        z_torch = logits(weights, images, model=model)
        torch_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        z_last = channels_last_logits()
        last_times.append(time.perf_counter() - started)
    same = int((z_ort.argmax(1) == z_torch.argmax(1)).sum())
    env = dict(os.environ)
    print(
        f"  ONNX Runtime {ort.__version__} ({len(onnx) / 1024:.0f} KiB model), 1 thread: "
        f"forward of {TOTAL} images {min(ort_times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in ort_times)}) against torch {min(torch_times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in torch_times)}): "
        f"{min(torch_times) / min(ort_times):.2f}x; "
        f"max |logit difference| {np.abs(z_ort - z_torch).max():.1e}, "
        f"same prediction for {same} of {TOTAL}"
    )
    print(
        f"  torch with channels_last weights and input: {min(last_times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in last_times)}): "
        f"{min(torch_times) / min(last_times):.2f}x the shard's torch forward; max |logit "
        f"difference| {np.abs(z_last - z_torch).max():.1e}, same prediction for "
        f"{int((z_last.argmax(1) == z_torch.argmax(1)).sum())} of {TOTAL}"
    )
    print(
        f"  import in a fresh interpreter: onnxruntime {import_seconds('onnxruntime', env):.2f} s, "
        f"torch {import_seconds('torch', env):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_RAY_DATA"))
    parser.add_argument("--model", default="cnn", help="a built-in model (fresh weights)")
    parser.add_argument("--store", help="take a stored run's model and weights instead")
    parser.add_argument("--run", help="with --store: the run (default: the latest)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("set --data-dir or MNIST_RAY_DATA to the folder holding MNIST/raw/")
    if args.store:
        model, weights = stored_weights(args.store, args.run)
    else:
        model = args.model
        torch.manual_seed(777)
        weights = {k: v.numpy() for k, v in get_model(model).state_dict().items()}
    onnx = artifact.export(model, weights)  # what the training task stores beside the weights
    if onnx is None:
        sys.exit(f"{model}: not exported (a user's model, or onnx is not installed)")
    images, labels = load("mnist", "test", args.data_dir)
    print(
        f"model {model}; {os.cpu_count()} CPUs; torch {torch.__version__}, Ray {ray.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    engines = {"onnxruntime": onnx, "torch": None}
    plain = {
        (e, t): in_process(weights, images, labels, model, t, args.repeat, data)
        for e, data in engines.items()
        for t in (1, 2)
    }
    for (e, t), s in plain.items():
        print(f"  plain {e} in this process, {t} thread(s): {s:.2f} s ({TOTAL / s:,.0f} images/s)")
    if not args.skip_ray:
        env = dict(os.environ, MNIST_RAY_DATA=args.data_dir)
        with running_head(env) as (address, head_env):
            os.environ.update(head_env)  # the head's token, for this driver
            from ray._raylet import Config

            Config.initialize("")  # Ray read its config at import; again, with the token
            figures = {
                e: through_ray(address, weights, images, labels, model, args.repeat, data)
                for e, data in engines.items()
            }
        for e, data in engines.items():
            again = in_process(weights, images, labels, model, 1, args.repeat, data)
            print(f"  plain {e}, 1 thread, again after Ray: {again:.2f} s")
            one = min(plain[(e, 1)], again)  # the load moves it; the least disturbed of the two
            ideal = one / min(4, os.cpu_count() or 1)  # 1 thread per shard, one per core
            cold, warm = figures[e][4]
            print(
                f"  {e}, 4 shards against its plain forward spread on {os.cpu_count()} cores, "
                f"1 thread each (ideal {ideal:.2f} s): Ray adds {warm / ideal - 1:+.0%} warm, "
                f"{cold / ideal - 1:+.0%} cold; against 2 threads in one process "
                f"({plain[(e, 2)]:.2f} s): {warm / plain[(e, 2)] - 1:+.0%} warm, "
                f"{cold / plain[(e, 2)] - 1:+.0%} cold"
            )
    onnx_against_torch(weights, images, model, args.repeat, onnx)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

"""How reading the store grows with its row count: one file per row, then compacted.

    python bench/bench_store.py                       # 1,000 -> 10,000 -> 100,000 rows a table
    python bench/bench_store.py --sizes 1000,10000 --big 0   # skip the 100,000 store

Rows are copies of a realistic run (15 epoch costs) and evaluation (real MNIST pixels for
the sample and the 25 misclassified images), written straight with pyarrow by two
processes. Each step prints its figures as it goes:

- `results` as a command (a fresh process: imports included) and in process (the DuckDB
  read and the listing of the latest 50 runs, what the command's table shows), against
  the per-file pyarrow reader the store had before;
- `compact`, then `results` again over the compacted store;
- `report` of the latest 20 runs of the largest store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mnist_ray.schema import EVALUATIONS, RUNS  # noqa: E402
from mnist_ray.store import Store  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)


def templates() -> dict[str, dict]:
    try:
        from mnist_ray import data

        images, labels = data.load("mnist", "test", None)
        images = np.asarray(images)
    except Exception:  # no MNIST here: zeros compress better than digits, say so below
        print("no MNIST files: pixels are zeros", file=sys.stderr)
        images, labels = np.zeros((100, 28, 28), np.uint8), np.zeros(100, np.int64)
    costs = [0.5352, 0.3648, 0.3324, 0.3155, 0.3045, 0.2965, 0.2904, 0.2856]
    costs += [0.2817, 0.2785, 0.2757, 0.2733, 0.2712, 0.2693, 0.2744]
    run = {
        **{n: None for n in RUNS.names},
        **{"dataset": "mnist", "epochs": 15, "batch_size": 100, "lr": 0.1, "seed": 777},
        **{"device": "cpu", "node_id": "n" * 56, "hostname": "bench", "gpu_ids": []},
        **{"cuda_graph": False, "epoch_costs": costs, "train_seconds": 2.5, "attempts": 1},
        **{
            "weights_uri": "w",
            "weights_sha256": "0" * 64,
            "torch_version": "2",
            "ray_version": "2",
        },
    }
    wrong = list(range(8, 8 + 25))
    evaluation = {
        **{n: None for n in EVALUATIONS.names},
        **{"dataset": "mnist", "shards": 4, "accuracy": 0.9226, "correct": 9226, "total": 10000},
        **{"per_class_accuracy": [0.92] * 10, "confusion": list(range(100))},
        **{"sample_index": 3757, "sample_label": 8, "sample_prediction": 3},
        **{
            "sample_probabilities": [0.1] * 10,
            "sample_pixels": images[3757 % len(images)].reshape(-1).tolist(),
        },
        **{"eval_seconds": 1.5, "node_ids": ["n"], "shard_peak_rss_mib": 300.0},
        "misclassified_index": wrong,
        "misclassified_label": [int(labels[i % len(labels)]) for i in wrong],
        "misclassified_prediction": [0] * 25,
        "misclassified_pixels": [images[i % len(images)].tobytes() for i in wrong],
    }
    return {"runs": run, "evaluations": evaluation, "images": images[:2000].copy()}


def _write_range(root: str, table: str, template: dict, images, lo: int, hi: int) -> None:
    schema = {"runs": RUNS, "evaluations": EVALUATIONS}[table]
    base = pa.Table.from_pylist([template], schema=schema)
    key = "run_id" if table == "runs" else "eval_id"
    folder = Path(root) / table
    for i in range(lo, hi):
        rid = f"run-bench-{i:07d}"
        row = base.set_column(schema.get_field_index("run_id"), "run_id", pa.array([rid]))
        when = pa.array([START + timedelta(seconds=i)], schema.field("created_at").type)
        row = row.set_column(schema.get_field_index("created_at"), "created_at", when)
        if table == "runs":
            lr = pa.array([0.1 if i % 2 else 0.01])
            row = row.set_column(schema.get_field_index("lr"), "lr", lr)
        else:
            eid = pa.array([f"eval-bench-{i:07d}"])
            row = row.set_column(schema.get_field_index(key), key, eid)
            # Different digits in every row, so compaction can't fold identical rows away.
            wrong = [images[(i * 25 + k) % len(images)].tobytes() for k in range(25)]
            field = schema.field("misclassified_pixels")
            pixels = pa.array([wrong], field.type)
            row = row.set_column(schema.get_field_index(field.name), field.name, pixels)
        pq.write_table(row, folder / f"{row[key][0].as_py()}.parquet")


def grow(root: Path, tmpl: dict, lo: int, hi: int) -> float:
    """Add rows lo..hi-1 to both tables, one file per row; returns the seconds it took."""
    started = time.perf_counter()
    chunks = [(lo + k * (hi - lo) // 8, lo + (k + 1) * (hi - lo) // 8) for k in range(8)]
    with ProcessPoolExecutor(2) as pool:
        jobs = [
            pool.submit(_write_range, str(root), t, tmpl[t], tmpl["images"], a, b)
            for t in ("runs", "evaluations")
            for a, b in chunks
        ]
        for j in jobs:
            j.result()
    return time.perf_counter() - started


def command(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(
        ["mnist-ray", *args],  # the installed command, running this checkout's code
        check=True,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    return time.perf_counter() - started


def in_process(root: Path) -> float:
    from mnist_ray.cli import RESULTS_SHOWN
    from mnist_ray.compare import listing

    started = time.perf_counter()
    view = listing(Store(root), limit=RESULTS_SHOWN)  # what the command's table reads
    assert view.runs and view.evaluations
    return time.perf_counter() - started


def per_file_pyarrow(root: Path) -> float:
    """The reader the store had before DuckDB: pq.read_table file by file."""
    started = time.perf_counter()
    for table in ("runs", "evaluations"):
        rows = []
        for name in sorted(os.listdir(root / table)):
            rows.extend(pq.read_table(root / table / name).to_pylist())
    return time.perf_counter() - started


def files(root: Path) -> int:
    return sum(len(os.listdir(root / t)) for t in ("runs", "evaluations"))


def size_mib(root: Path) -> float:
    return (
        sum(f.stat().st_size for t in ("runs", "evaluations") for f in (root / t).iterdir()) / 2**20
    )


def line(what: str, rows: int, root: Path, **figures: float) -> None:
    text = ", ".join(f"{k} {v:.2f} s" for k, v in figures.items())
    text += f" (load average {os.getloadavg()[0]:.1f})"  # other work on the machine skews figures
    print(
        f"{what:<34} {rows:>7} rows/table {files(root):>7} files {size_mib(root):8.1f} MiB: {text}",
        flush=True,
    )


def compact_and_read(root: Path, rows: int) -> None:
    """`compact`, then `results` over the compacted store."""
    line("compact", rows, root, **{"compact command": command("compact", "--store", str(root))})
    figures = {
        "results command": command("results", "--store", str(root)),
        "in process": in_process(root),
    }
    line("compacted", rows, root, **figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="row counts, one file per row")
    parser.add_argument("--big", type=int, default=100_000, help="the compacted store; 0: skip")
    parser.add_argument(
        "--old-reader-max",
        type=int,
        default=10_000,
        help="largest store the per-file reader is timed on",
    )
    parser.add_argument("--dir", default=None, help="where the store goes (default: a temp folder)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-")) / "store"
    for t in ("runs", "evaluations"):
        (root / t).mkdir(parents=True, exist_ok=True)
    tmpl, have = templates(), 0
    print(f"store {root}; {os.cpu_count()} CPUs", flush=True)
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            print(f"writing rows {have}..{n - 1}: {grow(root, tmpl, have, n):.1f} s", flush=True)
            have = n
            figures = {
                "results command": command("results", "--store", str(root)),
                "in process": in_process(root),
            }
            if n <= args.old_reader_max:
                figures["per-file pyarrow"] = per_file_pyarrow(root)
            line("one file per row", n, root, **figures)
        compact_and_read(root, have)
        if args.big:
            print(
                f"writing rows {have}..{args.big - 1}: {grow(root, tmpl, have, args.big):.1f} s",
                flush=True,
            )
            have = args.big
            line(
                "1 compacted file + row files",
                have,
                root,
                **{"results command": command("results", "--store", str(root))},
            )
            compact_and_read(root, have)
        report = str(root.parent / "report.html")
        line(
            "report, latest 20 runs",
            have,
            root,
            **{"report command": command("report", "--store", str(root), "--out", report)},
        )
    finally:
        if not args.dir:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

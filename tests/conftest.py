"""Shared fixtures: the MNIST files, one local Ray for the session, a trained run.

Tests read MNIST from $MNIST_RAY_DATA, else from ../shared/datasets beside the repo
(the build machines have no internet); a laptop with internet can point
MNIST_RAY_DATA at any folder and torchvision downloads the files there.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "datasets"
if not os.environ.get("MNIST_RAY_DATA") and (SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["MNIST_RAY_DATA"] = str(SHARED_DATA)

# The classic program's printed costs on these files (../shared/datasets/README.md).
TUTORIAL_COSTS = [
    0.535150588, 0.359577745, 0.331264257, 0.316404700, 0.307106972,
    0.300456554, 0.294933408, 0.290956199, 0.287074089, 0.284515619,
    0.281914055, 0.279526860, 0.277636588, 0.275874794, 0.274422765,
]  # fmt: skip


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ["MNIST_RAY_DATA"])


@pytest.fixture(scope="session")
def mnist_train():
    from mnist_ray.data import load

    return load("mnist", "train")


@pytest.fixture(scope="session")
def mnist_test():
    from mnist_ray.data import load

    return load("mnist", "test")


def ensure_ray():
    """One local Ray for the session (2 CPUs, loopback), started on first use and reused;
    a test that needs a cluster of its own shuts it down and the next user starts it again."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            address="local",
            _node_ip_address="127.0.0.1",
        )
    return ray


@pytest.fixture
def ray_local():
    return ensure_ray()


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """An IDX file of unsigned bytes: magic (0x0801 labels / 0x0803 images), dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (0x0800 | array.ndim)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())
    return path


def make_dataset(root: Path, n_train: int = 200, n_test: int = 50, folder: str = "FashionMNIST"):
    """Small, valid IDX files under root/<folder>/raw, in torchvision's layout."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return root

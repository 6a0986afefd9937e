"""MNIST and Fashion-MNIST as uint8 arrays, checked before use.

    from mnist_ray.data import load
    images, labels = load("mnist", "train")        # (60000, 28, 28) uint8, (60000,) int64

The files live where `torchvision.datasets.MNIST(root)` keeps them
(`<root>/MNIST/raw/train-images-idx3-ubyte`, ...), and torchvision downloads them
when they are missing. Once present, each IDX file is read here, in one pass that
checks what torchvision would only trip over later (magic number, dimensions, byte
size, the published md5 for MNIST, label range), so a bad file gets one line that
names it. The arrays are byte for byte torchvision's `.data` and `.targets`
(tests/test_data.py holds them side by side); reading them directly keeps torch
and torchvision out of the driver, which on a small machine saves seconds a command.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_ray.config import NUM_CLASSES, check_dataset

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: uint8 data, 3 dims / 1 dim
ROWS = COLS = 28


# torchvision's folder for each dataset under the root
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The md5 sums published with MNIST, of the uncompressed files.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


class DataError(RuntimeError):
    """A data file is missing or wrong; the message names it and says what to do."""


class Split(NamedTuple):
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64, like torchvision's .targets


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $MNIST_RAY_DATA, else a per-user cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("MNIST_RAY_DATA"):
        return Path(os.environ["MNIST_RAY_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnist-ray"


def raw_folder(dataset: str, root: Path) -> Path:
    return root / FOLDERS[check_dataset(dataset)] / "raw"


def load(
    dataset: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Split:
    """The checked arrays of one split; downloads through torchvision when files are missing."""
    root = data_root(data_dir)
    raw = raw_folder(dataset, root)
    image_file, label_file = (raw / name for name in FILES[split])
    if download and not (image_file.exists() and label_file.exists()):
        _download(dataset, root, named=bool(data_dir or os.environ.get("MNIST_RAY_DATA")))
    for path in (image_file, label_file):
        if not path.exists():
            raise DataError(
                f"{path}: not found; put the {FOLDERS[dataset]} IDX files in {raw} "
                f"or point --data-dir / MNIST_RAY_DATA at a folder holding {FOLDERS[dataset]}/raw/"
            )
    md5 = dataset == "mnist"
    images = read_idx(image_file, IMAGES_MAGIC, check_md5=md5)
    labels = read_idx(label_file, LABELS_MAGIC, check_md5=md5)
    if images.shape[1:] != (ROWS, COLS):
        raise DataError(f"{image_file}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(
            f"{label_file}: {len(labels)} labels for {len(images)} images in {image_file.name}; "
            "the two files are from different sets"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{label_file}: label {labels[bad]} at index {bad} is outside 0..9")
    return Split(images, labels.astype(np.int64))


def read_idx(path: Path, magic: int, check_md5: bool = False) -> np.ndarray:
    """One IDX file of unsigned bytes, its header checked against its size."""
    with open(path, "rb") as f:  # into a writable buffer, so torch can take it without a copy
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if not data:
        raise DataError(f"{path}: file is empty; delete it and download again")
    if data[:2] == b"\x1f\x8b":
        raise DataError(
            f"{path}: file is gzip-compressed; gunzip it (the raw IDX file is expected)"
        )
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        what = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(found, "not IDX")
        raise DataError(
            f"{path}: magic number {found} ({what}), expected {magic} for {kind}; "
            "check which file is which"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated inside its header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {len(data)} bytes, but its header {dims} needs {expected} ({state}); "
            "delete it and download again"
        )
    if check_md5 and path.name in MNIST_MD5:
        digest = hashlib.md5(data).hexdigest()
        if digest != MNIST_MD5[path.name]:
            raise DataError(
                f"{path}: md5 {digest} is not the published {MNIST_MD5[path.name]} "
                "(corrupted or not MNIST); delete it and download again"
            )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _download(dataset: str, root: Path, named: bool) -> None:
    """torchvision fetches and unpacks the four files (both splits) into a hidden folder in
    root; they move into place only once all four are there, so a failed or interrupted
    download leaves nothing behind. A root the user named (`named`) must exist: a typo is
    said so, not filled with a fresh download."""
    import shutil
    import tempfile

    import torchvision.datasets as tvd  # heavy; only when files are missing

    raw = raw_folder(dataset, root)
    if named and not root.is_dir():
        raise DataError(
            f"{root}: no such folder; create it to download {FOLDERS[dataset]} there, "
            f"or point --data-dir / MNIST_RAY_DATA at the folder holding {FOLDERS[dataset]}/raw/"
        )
    root.mkdir(parents=True, exist_ok=True)  # the default cache folder, made on first use
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[dataset]
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))  # same disk: renames are atomic
    try:
        try:
            cls(str(tmp), train=True, download=True)
        except Exception as exc:  # network, permissions, a mirror's error page
            cause = str(exc).strip().splitlines()
            raise DataError(
                f"{raw}: {FOLDERS[dataset]} files missing and the download failed "
                f"({cause[-1] if cause else type(exc).__name__}); copy the four IDX files "
                "there, or pass --data-dir / set MNIST_RAY_DATA to a folder that holds "
                f"{FOLDERS[dataset]}/raw/"
            ) from None
        raw.mkdir(parents=True, exist_ok=True)
        for name in (*FILES["train"], *FILES["test"]):
            if not (raw / name).exists():  # a file already there is the user's: kept
                os.replace(tmp / FOLDERS[dataset] / "raw" / name, raw / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

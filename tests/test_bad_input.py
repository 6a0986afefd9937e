"""Bad input, for real: corrupt data files, corrupt and read-only stores, a writer killed
between write and rename, and malformed numbers for every numeric option.

    PYTHONPATH=. python -m pytest tests/test_bad_input.py -q

None of these needs a Ray cluster: each failure must come before one is contacted. The
commands get `--address 127.0.0.1:<closed port>`, so a check that let the work through
would end in a different message (nothing answers at ...) and fail the test.
"""

from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from conftest import eval_row, stored_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnist_ray import cli
from mnist_ray.data import IMAGES_MAGIC, LABELS_MAGIC
from mnist_ray.store import Store, new_id

runner = CliRunner()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _run_row(store: Store, dataset: str = "mnist", shape=(10, 784)) -> dict:
    return stored_run(store, dataset=dataset, shape=shape)


# ---- data files -------------------------------------------------------------------------------


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _dataset(root: Path, split: str, n: int = 20) -> tuple[Path, Path]:
    """Small, valid Fashion-MNIST IDX files (no published md5 to match) under root."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    rng = np.random.default_rng(1)
    images.write_bytes(_idx(IMAGES_MAGIC, rng.integers(0, 256, (n, 28, 28))))
    labels.write_bytes(_idx(LABELS_MAGIC, np.arange(n) % 10))
    return images, labels


def _truncate(images: Path, labels: Path) -> tuple[Path, str]:
    images.write_bytes(images.read_bytes()[:-100])
    return images, "truncated"


def _empty(images: Path, labels: Path) -> tuple[Path, str]:
    labels.write_bytes(b"")
    return labels, "file is empty"


def _gzipped(images: Path, labels: Path) -> tuple[Path, str]:
    images.write_bytes(gzip.compress(images.read_bytes()))
    return images, "gzip-compressed"


def _swapped(images: Path, labels: Path) -> tuple[Path, str]:
    images.write_bytes(labels.read_bytes())  # the labels file given as the images file
    return images, "magic number 2049 (a labels file), expected 2051"


def _label_out_of_range(images: Path, labels: Path) -> tuple[Path, str]:
    labels.write_bytes(_idx(LABELS_MAGIC, np.array([3] * 5 + [10] + [4] * 14)))
    return labels, "label 10 at index 5 is outside 0..9"


def _counts_disagree(images: Path, labels: Path) -> tuple[Path, str]:
    labels.write_bytes(_idx(LABELS_MAGIC, np.arange(19) % 10))
    return labels, "19 labels for 20 images"


BREAKAGES = [_truncate, _empty, _gzipped, _swapped, _label_out_of_range, _counts_disagree]


def _one_error_line(result, *needles: str) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_bad_training_file_is_one_line_naming_it(breakage, tmp_path):
    bad, problem = breakage(*_dataset(tmp_path / "data", "train"))
    _dataset(tmp_path / "data", "test")
    store = tmp_path / "store"
    result = runner.invoke(
        cli.app,
        ["submit", "train", "--dataset", "fashion-mnist", "--epochs", "1"]
        + ["--data-dir", str(tmp_path / "data"), "--store", str(store)]
        + ["--address", _closed_port()],
    )
    assert result.exit_code == 1
    _one_error_line(result, str(bad), problem)
    assert _files(store) == []


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_bad_test_file_is_one_line_naming_it(breakage, tmp_path):
    bad, problem = breakage(*_dataset(tmp_path / "data", "test"))
    store = Store(tmp_path / "store")
    run = _run_row(store, dataset="fashion-mnist")
    before = _files(tmp_path / "store")
    result = runner.invoke(
        cli.app,
        ["evaluate", "--run", run["run_id"], "--data-dir", str(tmp_path / "data")]
        + ["--store", store.location, "--address", _closed_port()],
    )
    assert result.exit_code == 1
    _one_error_line(result, str(bad), problem)
    assert _files(tmp_path / "store") == before


def test_a_mistyped_data_dir_is_one_line_and_makes_nothing(tmp_path):
    typo = tmp_path / "dta"
    store = tmp_path / "store"
    result = runner.invoke(
        cli.app,
        ["submit", "train", "--epochs", "1", "--data-dir", str(typo), "--store", str(store)]
        + ["--address", _closed_port()],
    )
    assert result.exit_code == 1
    _one_error_line(result, f"{typo}: no such folder")
    assert list(tmp_path.iterdir()) == []  # neither dta/MNIST/raw nor the store


# ---- corrupt files in the store ---------------------------------------------------------------


def test_results_shows_every_good_row_and_names_each_bad_file(tmp_path):
    store = Store(tmp_path / "store")
    runs = [_run_row(store) for _ in range(2)]
    evals = [eval_row(r["run_id"]) for r in runs]
    for e in evals:
        store.write_row("evaluations", e)
    good = (tmp_path / "store" / "runs" / f"{runs[0]['run_id']}.parquet").read_bytes()
    bad = {
        "runs/zero.parquet": b"",
        "runs/truncated.parquet": good[: len(good) // 2],
        "evaluations/text.parquet": b"run_id,accuracy\nx,1.0\n",
        "evaluations/a-run-file.parquet": good,  # Parquet, but not an evaluations table
    }
    for relpath, content in bad.items():
        (tmp_path / "store" / relpath).write_bytes(content)

    result = runner.invoke(cli.app, ["results", "--store", store.location, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert sorted(r["run_id"] for r in shown["runs"]) == sorted(r["run_id"] for r in runs)
    assert sorted(e["eval_id"] for e in shown["evaluations"]) == sorted(e["eval_id"] for e in evals)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("Skipped")]
    assert len(skipped) == len(bad), result.stderr
    for relpath in bad:
        assert any(str(tmp_path / "store" / relpath) in line for line in skipped), relpath
    assert "Traceback" not in result.output


def test_tampered_weights_are_refused(tmp_path):
    store = Store(tmp_path / "store")
    run = _run_row(store)
    weights = tmp_path / "store" / "weights" / f"{run['run_id']}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one float
    weights.write_bytes(bytes(data))
    result = runner.invoke(
        cli.app, ["evaluate", "--store", store.location, "--address", _closed_port()]
    )
    assert result.exit_code == 1
    _one_error_line(result, str(weights), "does not match run", "refusing to load it")
    assert _files(tmp_path / "store" / "evaluations") == []


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    store = Store(tmp_path / "store")
    run = _run_row(store, shape=(10, 783))  # the row's sha256 matches: only the shape is wrong
    result = runner.invoke(
        cli.app,
        ["evaluate", "--run", run["run_id"], "--store", store.location]
        + ["--address", _closed_port()],
    )
    assert result.exit_code == 1
    _one_error_line(result, "weight is float32[10, 783], expected float32[10, 784]")
    assert _files(tmp_path / "store" / "evaluations") == []


# ---- a store that cannot be written -----------------------------------------------------------


@contextmanager
def _read_only_bind_mount(folder: Path):
    folder.mkdir()
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if ok.returncode:
        pytest.skip(f"mount --bind unavailable: {ok.stderr.decode().strip()}")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder), str(folder)], capture_output=True
        )
        if ro.returncode:
            pytest.skip(f"read-only remount unavailable: {ro.stderr.decode().strip()}")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@contextmanager
def _immutable_folder(folder: Path):
    folder.mkdir()
    ok = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if ok.returncode:
        pytest.skip(f"chattr +i unavailable: {ok.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


@contextmanager
def _file_in_the_way(folder: Path):
    folder.write_text("a file where the store folder should be")
    yield folder / "store"


@contextmanager
def _under_proc(folder: Path):
    yield Path("/proc/mnist-ray-store")


@contextmanager
def _chmod_0555(folder: Path):
    folder.mkdir(mode=0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except PermissionError:
        yield folder
        return
    probe.unlink()
    pytest.skip("running as root: chmod 0555 does not stop writes (the other cases cover it)")


@pytest.mark.parametrize(
    "unwritable",
    [_read_only_bind_mount, _immutable_folder, _file_in_the_way, _under_proc, _chmod_0555],
    ids=lambda f: f.__name__.strip("_"),
)
def test_unwritable_store_fails_before_training(unwritable, tmp_path):
    with unwritable(tmp_path / "ro") as store:
        result = runner.invoke(
            cli.app,
            ["submit", "train", "--epochs", "1", "--store", str(store)]
            + ["--address", _closed_port()],  # reaching Ray would say "nothing answers"
        )
        assert result.exit_code == 1  # before Ray: reaching it would say "nothing answers"
        _one_error_line(result, f"--store {store}: not writable")
        assert _files(store) == [] or not store.is_dir()


# ---- a writer killed between write and rename -------------------------------------------------

_DIE_BEFORE_RENAME = """
import json, os, signal, sys
from datetime import datetime
from mnist_ray.store import Store

class DieBeforeRename:
    # The real filesystem, except that the process is SIGKILLed when it asks for the
    # rename: the temporary file is complete on disk, the final name never appears.
    def __init__(self, fs):
        self.fs = fs
    def __getattr__(self, name):
        return getattr(self.fs, name)
    def move(self, src, dest):
        print(src, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

store = Store(sys.argv[1])
store.fs = DieBeforeRename(store.fs)
row = json.loads(sys.argv[2])
row["created_at"] = datetime.fromisoformat(row["created_at"])
store.write_row("runs", row)
"""


def test_crash_between_write_and_rename_leaves_nothing_visible(tmp_path):
    store = Store(tmp_path / "store")
    good = _run_row(store)
    row = dict(good, run_id=new_id("run"), created_at=good["created_at"].isoformat())
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_BEFORE_RENAME, store.location, json.dumps(row)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    tmp = Path(proc.stdout.strip())
    assert tmp.exists() and tmp.stat().st_size > 0 and tmp.name.startswith(".")

    table = ds.dataset(tmp_path / "store" / "runs", format="parquet").to_table()
    assert table.column("run_id").to_pylist() == [good["run_id"]]
    result = runner.invoke(cli.app, ["results", "--store", store.location, "--json"])
    assert result.exit_code == 0
    assert [r["run_id"] for r in json.loads(result.stdout)["runs"]] == [good["run_id"]]
    assert "Skipped" not in result.stderr
    import duckdb

    glob = str(tmp_path / "store" / "runs" / "*.parquet")
    assert duckdb.sql(f"select run_id from read_parquet('{glob}')").fetchall() == [
        (good["run_id"],)
    ]


# ---- numeric options --------------------------------------------------------------------------

NUMERIC = {  # option -> (command, Python type, lowest valid, highest valid)
    "--epochs": ("train", int, 1, 10_000),
    "--batch-size": ("train", int, 1, 60_000),
    "--seed": ("train", int, 0, 2**63 - 1),
    "--shards": ("evaluate", int, 1, 10_000),
}
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _rejected(option: str, value: str, store: Path) -> None:
    command = ["submit", "train"] if option != "--shards" else ["evaluate"]
    result = runner.invoke(
        cli.app, [*command, f"{option}={value}", "--store", str(store), "--address", "x:1"]
    )
    assert result.exit_code == 2, (option, value, result.output)
    assert f"'{option}'" in "".join(c for c in result.stderr if c not in " \n│"), result.stderr
    assert "Traceback" not in result.output
    assert not store.exists()


def _not_a(kind: type, text: str) -> bool:
    try:
        kind(text)
    except (ValueError, OverflowError):
        return True
    return False


@pytest.mark.parametrize("option", NUMERIC)
@PROPERTY
@given(data=st.data())
def test_out_of_range_integers_are_rejected(option, data, tmp_path):
    _, _, low, high = NUMERIC[option]
    value = data.draw(st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1)))
    _rejected(option, str(value), tmp_path / "store")


@pytest.mark.parametrize("option", [*NUMERIC, "--lr"])
@PROPERTY
@given(text=st.text(max_size=12))
def test_malformed_numbers_are_rejected(option, text, tmp_path):
    kind = float if option == "--lr" else int
    if not _not_a(kind, text) or "\x00" in text:
        return  # a well-formed number: the other properties cover ranges
    _rejected(option, text, tmp_path / "store")


@PROPERTY
@given(
    value=st.one_of(
        st.floats(max_value=0.0),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    )
)
def test_out_of_range_learning_rates_are_rejected(value, tmp_path):
    _rejected("--lr", repr(value), tmp_path / "store")

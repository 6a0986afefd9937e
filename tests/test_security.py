"""Loading results can't run code, and ids from the user can't leave the store.

    PYTHONPATH=. python -m pytest tests/test_security.py -q

The planted files are live: a pickle whose unpickling creates a marker file (the test first
proves it does, in a separate process). Then every load path of the project is pointed at
it, and the marker must never appear.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_row
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnist_ray import checkpoints, cli
from mnist_ray.config import ConfigError, check_id
from mnist_ray.store import Store, StoreError, new_id

runner = CliRunner()
PACKAGE = Path(cli.__file__).parent


class _Payload:
    """Unpickling this calls open(marker, "w"): code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def payload(tmp_path) -> tuple[bytes, Path]:
    marker = tmp_path / "outside" / "PWNED"
    marker.parent.mkdir()
    data = pickle.dumps(_Payload(marker))
    subprocess.run(  # prove the payload is live: a plain pickle.loads does create the marker
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=data,
        check=True,
        timeout=60,
    )
    assert marker.exists()
    marker.unlink()
    return data, marker


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _run_row(run_id: str, weights: bytes) -> dict:
    return run_row(run_id, f"weights/{run_id}.safetensors", hashlib.sha256(weights).hexdigest())


def _flat(text: str) -> str:
    return "".join(c for c in text if not c.isspace() and c not in "│╭╮╰╯─")


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


# ---- no pickle on any load path ---------------------------------------------------------------


def test_pickle_planted_as_weights_is_refused(payload, tmp_path):
    data, marker = payload
    store = Store(tmp_path / "store")
    run_id = new_id("run")
    (tmp_path / "store" / "weights").mkdir(parents=True)
    (tmp_path / "store" / "weights" / f"{run_id}.safetensors").write_bytes(data)
    store.write_row("runs", _run_row(run_id, data))  # its sha256 matches: only the format stops it
    result = runner.invoke(
        cli.app, ["evaluate", "--store", store.location, "--address", _closed_port()]
    )
    assert result.exit_code == 1
    assert "not a safetensors file" in result.stderr
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_torch_save_file_planted_as_weights_is_refused(payload, tmp_path):
    _, marker = payload
    buffer = io.BytesIO()
    torch.save({"weight": _Payload(marker), "bias": torch.zeros(10)}, buffer)
    data = buffer.getvalue()
    store = Store(tmp_path / "store")
    run_id = new_id("run")
    (tmp_path / "store" / "weights").mkdir(parents=True)
    (tmp_path / "store" / "weights" / f"{run_id}.safetensors").write_bytes(data)
    store.write_row("runs", _run_row(run_id, data))
    result = runner.invoke(
        cli.app, ["evaluate", "--store", store.location, "--address", _closed_port()]
    )
    assert result.exit_code == 1
    assert "not a safetensors file" in result.stderr
    assert not marker.exists()


def test_pickle_planted_as_parquet_is_named_not_loaded(payload, tmp_path):
    data, marker = payload
    store = Store(tmp_path / "store")
    good = new_id("run")
    store.write_row("runs", _run_row(good, b"w"))
    for table in ("runs", "evaluations"):
        (tmp_path / "store" / table).mkdir(exist_ok=True)
        (tmp_path / "store" / table / "evil.parquet").write_bytes(data)
    result = runner.invoke(cli.app, ["results", "--store", store.location, "--json"])
    assert result.exit_code == 0, result.output
    assert [r["run_id"] for r in json.loads(result.stdout)["runs"]] == [good]
    for table in ("runs", "evaluations"):
        assert f"Skipped {tmp_path / 'store' / table / 'evil.parquet'}" in result.stderr
    result = runner.invoke(cli.app, ["show", "--store", store.location])
    assert result.exit_code == 1  # no good evaluation to show; the bad file is not one
    assert not marker.exists()


def test_pickle_planted_as_checkpoint_is_refused_on_resume(payload, tmp_path):
    data, marker = payload
    store = Store(tmp_path / "store")
    run_id = new_id("run")
    folder = tmp_path / "store" / checkpoints.folder(run_id)
    folder.mkdir(parents=True)
    (folder / "epoch-0001.safetensors").write_bytes(data)
    with pytest.raises(StoreError, match="not a safetensors file"):
        checkpoints.latest(store, run_id)  # what a retried training task reads first
    assert not marker.exists()


def test_no_module_can_unpickle():
    """The package never imports pickle or calls a loader that unpickles."""
    unpicklers = {"load", "loads", "Unpickler"}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(
                    n.split(".")[0] in {"pickle", "dill", "cloudpickle", "joblib"} for n in names
                ), f"{path.name}:{node.lineno} imports a pickler"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = ast.unparse(node.func.value)
                if node.func.attr in unpicklers and owner in {"torch", "np", "numpy", "pickle"}:
                    pytest.fail(f"{path.name}:{node.lineno} calls {owner}.{node.func.attr}")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                pytest.fail(f"{path.name}:{node.value.lineno} passes allow_pickle")


# ---- ids from the user never leave the store --------------------------------------------------

BAD_IDS = ["../../etc", "..", "a/b", "/etc/passwd", "run/../../x", ".hidden", "a\\b", "x" * 65]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_rejected_and_touch_nothing(bad, tmp_path):
    store = Store(tmp_path / "store")
    run_id = new_id("run")
    weights = np.zeros((10, 784), np.float32), np.zeros(10, np.float32)
    uri, sha = store.write_weights(run_id, {"weight": weights[0], "bias": weights[1]})
    store.write_row("runs", dict(_run_row(run_id, b""), weights_sha256=sha, weights_uri=uri))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    before = _tree(tmp_path)

    for args in (
        ["evaluate", "--run", bad, "--store", store.location, "--address", _closed_port()],
        ["show", bad, "--store", store.location],
    ):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "notavalidid" in _flat(result.stderr)  # rich may wrap it inside a box
    with pytest.raises(ConfigError):
        store.write_row("runs", dict(_run_row(run_id, b""), run_id=bad))
    with pytest.raises(ConfigError):
        store.write_weights(bad, {"weight": weights[0], "bias": weights[1]})
    with pytest.raises(ConfigError):
        checkpoints.folder(bad)
    assert _tree(tmp_path) == before


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_every_accepted_id_is_one_plain_file_name(text):
    try:
        check_id(text)
    except ConfigError:
        return
    assert Path(text).name == text and text not in {".", ".."} and not text.startswith(".")
    assert "/" not in text and "\\" not in text and "\x00" not in text
    store = Store("/srv/store")
    assert Path(store.path("runs", f"{text}.parquet")).parent == Path("/srv/store/runs")

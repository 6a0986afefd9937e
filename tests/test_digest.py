"""What each hash says: weights_sha256 is the safetensors file's (its header names the run),
weights_digest the tensors' alone, so two runs with identical weights share a digest, and
`compare` says they are identical.

    PYTHONPATH=. python -m pytest tests/test_digest.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ensure_ray
from safetensors.numpy import load_file
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.store import tensors_digest

runner = CliRunner()


def test_the_digest_covers_names_dtypes_shapes_and_bytes():
    w = {"b": np.zeros(3, np.float32), "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    same = {"a": w["a"].copy(), "b": w["b"].copy()}  # another order, other arrays
    assert tensors_digest(w) == tensors_digest(same)
    for changed in (
        {**w, "a": w["a"].reshape(3, 2)},  # shape
        {**w, "b": w["b"].astype(np.float64)},  # dtype
        {"c": w["a"], "b": w["b"]},  # name
        {**w, "b": np.array([0, 0, 1e-45], np.float32)},  # one bit
    ):
        assert tensors_digest(changed) != tensors_digest(w)


@pytest.mark.cluster
def test_two_runs_with_identical_weights_share_a_digest_not_a_file_hash(tmp_path):
    ensure_ray()
    store = tmp_path / "store"
    at = ["--store", str(store)]
    rows = []
    for _ in range(2):  # the same settings on the CPU: the same tensors, bit for bit
        got = runner.invoke(app, ["submit", "train", "--epochs", "1", "--gpus", "0", *at, "--json"])
        assert got.exit_code == 0, got.output
        rows.append(json.loads(got.stdout))
    a, b = rows
    files = [load_file(store / "weights" / f"{r['run_id']}.safetensors") for r in rows]
    assert all(np.array_equal(files[0][k], files[1][k]) for k in files[0])
    assert a["weights_digest"] == b["weights_digest"] == tensors_digest(files[0])
    assert a["weights_sha256"] != b["weights_sha256"]  # the files name their runs

    listed = json.loads(runner.invoke(app, ["results", *at, "--json", "--all-columns"]).stdout)
    digests = {r["run_id"]: (r["weights_digest"], r["weights_sha256"]) for r in listed["runs"]}
    assert digests[a["run_id"]][0] == digests[b["run_id"]][0]
    assert digests[a["run_id"]][1] != digests[b["run_id"]][1]
    plain = json.loads(runner.invoke(app, ["results", *at, "--json"]).stdout)
    assert "weights_digest" not in plain["runs"][0]  # the listing's 19 columns stay 19

    compared = runner.invoke(app, ["compare", a["run_id"], b["run_id"], *at, "--json"])
    assert json.loads(compared.stdout)["identical_weights"] == [[a["run_id"], b["run_id"]]]
    shown = runner.invoke(app, ["compare", a["run_id"], b["run_id"], *at]).stdout
    assert f"identical weights (bit for bit): {a['run_id']} = {b['run_id']}" in shown

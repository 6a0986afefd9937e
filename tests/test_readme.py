"""The README says what the code does: its store tables are the real schema, and the
query lines it gives run as written.

    PYTHONPATH=. python -m pytest tests/test_readme.py -q
"""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import REPO, client_env, eval_row, stored_run

from mnist_ray.store import EVALUATIONS, RUNS, SWEEPS, Store

README = (REPO / "README.md").read_text()


def readme_lines(start: str) -> list[str]:
    """The README's indented command lines that begin with `start`."""
    return [ln.strip() for ln in README.splitlines() if ln.startswith(f"    {start}")]


@pytest.mark.parametrize(
    "table, schema", [("runs", RUNS), ("evaluations", EVALUATIONS), ("sweeps", SWEEPS)]
)
def test_the_store_table_lists_the_schemas_columns(table, schema):
    (row,) = [ln for ln in README.splitlines() if ln.startswith(f"| {table} | ")]
    assert re.findall(r"`(\w+)`", row) == schema.names


def test_the_query_lines_run_as_written(tmp_path):
    """Run from a folder holding the default store, as a user would after a run."""
    store = Store(tmp_path / "mnist-ray-store")
    run = stored_run(store)
    evaluation = eval_row(run["run_id"])
    store.write_row("evaluations", evaluation)
    lines = readme_lines('python -c "import duckdb') + readme_lines('python -c "import pyarrow')
    assert len(lines) == 2, lines
    for line in lines:
        got = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=client_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert got.returncode == 0, got.stderr
        assert run["run_id"] in got.stdout, got.stdout
    assert (
        "0.9226"
        in subprocess.run(
            ["bash", "-c", lines[0]], cwd=tmp_path, capture_output=True, text=True, timeout=120
        ).stdout
    )

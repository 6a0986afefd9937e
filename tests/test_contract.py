"""What a script and a person can rely on, without starting Ray: strict JSON, the counts
the docs state, hints that paste, refusals before Ray starts, and what a killed driver left.

    PYTHONPATH=. python -m pytest tests/test_contract.py -q
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, stored_run
from typer.testing import CliRunner

from mnist_ray import leftovers
from mnist_ray.cli import app
from mnist_ray.jobs import job_failure
from mnist_ray.liveness import started
from mnist_ray.output import as_csv, as_json
from mnist_ray.schema import SCHEMAS
from mnist_ray.store import Store
from mnist_ray.streams import ADDRESS_VAR, LogSplitter, marker

runner = CliRunner()


def strict(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


# ---- strict JSON -------------------------------------------------------------------------------


def test_a_non_finite_number_is_null_in_json_and_empty_in_csv():
    doc = {"epoch_costs": [math.nan, 0.5, math.inf], "best": -math.inf, "n": (1, math.nan)}
    assert strict(as_json(doc)) == {"epoch_costs": [None, 0.5, None], "best": None, "n": [1, None]}
    assert as_csv(["a", "b"], [{"a": math.nan, "b": [math.inf, 1.0]}]) == 'a,b\n,"[null, 1.0]"\n'


# ---- what the docs and --help state, held to the program ----------------------------------------


@pytest.fixture
def one_run(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.check_writable()
    return store, stored_run(store)


def _stated(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, pattern
    return int(found.group(1))


def test_results_has_the_columns_docs_commands_states(one_run):
    store, _ = one_run
    doc = (REPO / "docs" / "commands.md").read_text()
    listed = strict(runner.invoke(app, ["results", "--store", store.location, "--json"]).stdout)
    (run,) = listed["runs"]
    assert len(run) == _stated(r"each run with the listing's (\d+) columns", doc)
    assert len(run) == _stated(r"`failure`: (\d+) columns", doc)
    header = runner.invoke(app, ["results", "--store", store.location, "--csv"]).stdout
    assert len(header.splitlines()[0].split(",")) == _stated(r"the listing's (\d+) columns\n", doc)
    for name in run:  # each column the docs name, by name
        assert f"`{name}`" in doc, name
    readme = (REPO / "README.md").read_text()
    fields = [int(f) for f in re.search(r"cut -d, -f([\d,]+)", readme).group(1).split(",")]
    assert [list(run)[f - 1] for f in fields] == ["run_id", "status", "checkpoint_epoch"]


def test_query_help_names_every_table_it_reads():
    shown = " ".join(runner.invoke(app, ["query", "--help"], env={"COLUMNS": "300"}).stdout.split())
    for table in SCHEMAS:
        assert f"`{table}`" in shown, table


def test_a_misspelt_model_names_both_forms_and_the_closest_name():
    got = runner.invoke(app, ["submit", "train", "--model", "cnnn"], env={"COLUMNS": "300"})
    assert got.exit_code == 2
    said = " ".join(got.stderr.replace("│", " ").split())
    assert "FILE.py:NAME" in said and "package.module:NAME" in said and "'cnn'?" in said, said


# ---- refused before Ray starts ---------------------------------------------------------------


def test_more_cpus_than_the_machine_has_is_refused_before_anything(tmp_path):
    store = tmp_path / "store"
    for args in (["submit", "train", "--cpus", "1024"], ["sweep", "--cpus-per-trial", "1000"]):
        got = runner.invoke(app, [*args, "--store", str(store)], env={"COLUMNS": "300"})
        assert got.exit_code == 2, got.output
        assert "this machine has" in got.stderr and "Training" not in got.stderr
        assert not store.exists()


def test_a_gpu_this_machine_lacks_is_refused_before_anything(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --gpus 1 is no mistake here")
    store = tmp_path / "store"
    got = runner.invoke(app, ["submit", "train", "--gpus", "1", "--store", str(store)])
    assert got.exit_code == 2
    assert "no GPU" in got.stderr and "run-" not in got.stderr
    assert not store.exists()


# ---- a job's failure and the hints it prints -----------------------------------------------------


RAY_SAYS = "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"


def test_a_failed_job_names_its_own_last_error():
    log = (
        "INFO job_manager.py:581 -- Runtime env is setting up.\n"
        + "Training softmax on mnist ...\n"
        + "Error: /data/MNIST/raw: MNIST files missing and the download failed (offline)\n"
    )
    line = job_failure(RAY_SAYS + log)
    assert line == (
        "Job entrypoint command failed with exit code 1: "
        "/data/MNIST/raw: MNIST files missing and the download failed (offline)"
    )
    framed = RAY_SAYS + marker("0123456789abcdef") + "{}\nlast words\n"
    assert job_failure(framed).endswith(": last words")
    # no log in Ray's message: what the followed log said, else that it is empty
    assert job_failure(RAY_SAYS, said="no such run").endswith(": no such run")
    assert (
        job_failure(RAY_SAYS) == "Job entrypoint command failed with exit code 1 (its log is empty)"
    )
    assert job_failure("Job was stopped.\nmore") == "Job was stopped."


def test_the_log_splitter_keeps_the_last_error_line():
    import io

    split = LogSplitter(io.StringIO(), io.StringIO())
    split.feed("Error: first\nsomething\nError: --run x: no such run\nbye\n")
    assert split.last_error == "--run x: no such run"


def test_a_hint_a_job_prints_carries_the_address_it_was_submitted_to(tmp_path, monkeypatch):
    """`--resume` of an unfinished run: its hint names the store and the Jobs API address."""
    store = Store(str(tmp_path / "store"))
    store.check_writable()
    run = stored_run(store)
    from mnist_ray.schema import run_row

    store.write_row("runs", run_row(**{**run, "status": "interrupted"}))
    monkeypatch.setenv(ADDRESS_VAR, "http://head:8265")  # as the job's runtime_env sets it
    got = runner.invoke(
        app, ["evaluate", "--run", run["run_id"], "--store", store.location], env={"COLUMNS": "500"}
    )
    assert got.exit_code == 1
    hint = re.search(r"`(mnist-ray submit train [^`]+)`", got.stderr).group(1)
    assert hint.split() == [
        "mnist-ray", "submit", "train", "--resume", run["run_id"],
        "--store", store.location, "--address", "http://head:8265",
    ]  # fmt: skip


# ---- what a killed embedded driver left running ------------------------------------------------


def _holder(folder: Path) -> subprocess.Popen:
    """A process with a file open in `folder`, as a Ray agent holds its session's logs."""
    code = f"f = open({str(folder / 'logs' / 'agent.log')!r}, 'a'); import time; time.sleep(120)"
    (folder / "logs").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not leftovers._holding(str(folder)):
        time.sleep(0.05)
    return proc


def test_the_next_command_ends_what_a_killed_driver_left(tmp_path, monkeypatch):
    monkeypatch.setattr(leftovers, "FOLDER", tmp_path / "records")
    (tmp_path / "records").mkdir()
    dead, alive = tmp_path / "session_dead", tmp_path / "session_alive"
    left, kept = _holder(dead), _holder(alive)
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a driver that has ended
        gone.wait()
        records = {
            "dead": {"pid": gone.pid, "start": "1", "session": str(dead)},
            "alive": {
                "pid": kept.pid,
                "start": started(kept.pid),
                "session": str(alive),
            },
        }  # the live one names a live "driver": its Ray is in use
        for name, rec in records.items():
            (tmp_path / "records" / f"{name}.json").write_text(json.dumps(rec))
        said = []
        assert leftovers.end_leftovers(said.append) == 1
        assert left.wait(timeout=10) == -9 and kept.poll() is None
        (line,) = said
        assert f"left by mnist-ray pid {gone.pid}" in line and "Ended 1 Ray process" in line
        assert [p.name for p in (tmp_path / "records").iterdir()] == ["alive.json"]
        assert leftovers.end_leftovers(said.append) == 0 and len(said) == 1
    finally:
        for p in (left, kept):
            p.kill()
            p.wait()

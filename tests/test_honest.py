"""Messages that say what happened: retries only when Ray retried, prefixes treated alike,
a missing store named, Ctrl-C not called an error, help that reads well.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_honest.py -q
"""

from __future__ import annotations

import json

import pytest
import typer
from conftest import eval_row, stored_run
from typer.testing import CliRunner

from mnist_ray import cli
from mnist_ray.cli import app
from mnist_ray.store import Store

runner = CliRunner()


# ---- application errors are not "retries" ----------------------------------------------------


def test_an_error_the_task_raised_is_its_cause_once(ray_local):
    """The real training task, given a store it can't open: an application error, which
    Ray does not retry (max_retries covers dead workers and nodes only)."""
    from types import SimpleNamespace

    import numpy as np

    from mnist_ray.cluster import ClusterError, train_on_ray
    from mnist_ray.config import TrainConfig

    images, labels = np.zeros((100, 28, 28), np.uint8), np.zeros(100, np.uint8)
    unopenable = SimpleNamespace(location="nope://x")  # what the task gets: the location
    with pytest.raises(ClusterError) as got:
        train_on_ray(TrainConfig(epochs=1), images, labels, unopenable, "r", gpus="0", log=print)
    message = str(got.value)
    # Raised in the task, where no command is at hand: the parameter's name, not `--store`.
    assert message.startswith("training failed: StoreError: store nope://x: "), message
    assert "retries" not in message and "\n" not in message


# ---- show and evaluate --run: one prefix rule ---------------------------------------------------


@pytest.fixture
def two_evaluations(tmp_path):
    store = Store(tmp_path / "store")
    run = stored_run(store)
    rows = [eval_row(run["run_id"]) | {"eval_id": f"eval-ab{i}"} for i in (1, 2)]
    for row in rows:
        store.write_row("evaluations", row)
    return store, rows


def test_show_takes_a_unique_prefix_and_refuses_an_ambiguous_one(two_evaluations):
    store, rows = two_evaluations
    one = runner.invoke(app, ["show", "eval-ab2", "--store", store.location, "--json"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["eval_id"] == "eval-ab2"
    several = runner.invoke(app, ["show", "eval-ab", "--store", store.location])
    assert several.exit_code == 1
    assert "EVAL_ID eval-ab: matches 2 evaluations (eval-ab1, eval-ab2)" in several.stderr
    missing = runner.invoke(app, ["show", "eval-nope", "--store", store.location])
    assert missing.exit_code == 1
    assert "no such evaluation" in missing.stderr and "evaluate` first" not in missing.stderr


def test_evaluate_run_prefix_refusal_lists_the_runs(tmp_path):
    store = Store(tmp_path / "store")
    runs = [stored_run(store, seed=s)["run_id"] for s in (0, 1)]
    prefix = runs[0][:4]  # "run-": both
    result = runner.invoke(app, ["evaluate", "--run", prefix, "--store", store.location])
    assert result.exit_code == 1
    assert f"matches 2 runs ({runs[0]}, {runs[1]})" in result.stderr


@pytest.mark.parametrize(
    "args", [["results"], ["show"], ["evaluate"], ["results", "--json"], ["show", "--json"]]
)
def test_read_commands_name_a_store_that_is_not_there(tmp_path, args):
    missing = tmp_path / "no-such-store"
    result = runner.invoke(app, [*args, "--store", str(missing)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: --store {missing}: no such store (nothing at that path)"]
    assert not missing.exists()


# ---- Ctrl-C ---------------------------------------------------------------------------------


def _interrupted_command(name: str):
    """A command of this CLI's shape whose work is interrupted by Ctrl-C."""

    def command() -> None:
        raise KeyboardInterrupt

    command.__name__ = name
    one = typer.Typer()
    one.command()(cli.friendly(name)(command))
    return one


@pytest.mark.parametrize("name", ["results", "show", "status", "logs"])
def test_ctrl_c_in_a_reading_command_says_just_interrupted(name):
    result = runner.invoke(_interrupted_command(name), [])
    assert result.exit_code == 130
    assert result.stderr == "interrupted\n"


def test_ctrl_c_in_a_ray_command_is_not_called_an_error():
    result = runner.invoke(_interrupted_command("evaluate"), [])
    assert result.exit_code == 130
    assert result.stderr.startswith("interrupted: the Ray tasks were cancelled")
    assert "Error" not in result.stderr


# ---- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["submit", "train"], ["evaluate"], ["results"], ["show"], ["jobs", "list"], ["jobs", "logs"]],
)
def test_help_shows_flags_as_flags_and_ranges_readably(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout and "<=x<=" not in result.stdout
    if command == ["submit", "train"]:
        assert "[0..2**63-1]" in result.stdout and "9223372036854775807" not in result.stdout
        assert "[1..10_000]" in result.stdout

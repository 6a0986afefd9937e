"""What the commands print for a person, through the real CLI on a real folder store: ids
whole at any width, COLUMNS obeyed, captions that say only what is there, errors spelled as
the command's options, Ctrl-C's message per command.

    PYTHONPATH=. python -m pytest tests/test_render.py -q
"""

from __future__ import annotations

import json

import pytest
import typer
from conftest import eval_row, run_row
from typer.testing import CliRunner

from mnist_ray import render
from mnist_ray.cli import app
from mnist_ray.config import ConfigError
from mnist_ray.store import Store, new_id
from mnist_ray.ui import PIPE_WIDTH, friendly

runner = CliRunner()


def invoke(*args: str, **env: str | None):
    return runner.invoke(app, list(args), env=env or None, catch_exceptions=False)


def runs_with_evaluations(store: Store, n: int = 2) -> list[dict]:
    rows = []
    for i in range(n):
        row = run_row(new_id("run"), "w", "s", lr=0.1 / (i + 1), seed=i)
        store.write_row("runs", row)
        store.write_row("evaluations", eval_row(row["run_id"]))
        rows.append(row)
    return rows


@pytest.mark.parametrize("columns", ["20", "40", "80"])
def test_ids_stay_whole_on_one_line_however_narrow_the_columns(tmp_path, columns):
    store = Store(str(tmp_path))
    rows = runs_with_evaluations(store)
    got = invoke("results", "--all-columns", "--store", str(tmp_path), COLUMNS=columns)
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    listed = json.loads(invoke("results", "--store", str(tmp_path), "--json").stdout)
    evals = [e["eval_id"] for e in listed["evaluations"]]
    assert len(evals) == len(rows)
    for whole in [r["run_id"] for r in rows] + evals:
        assert any(whole in line for line in lines), (whole, got.stdout)


def test_piped_output_obeys_columns_and_is_wide_without_it(tmp_path):
    runs_with_evaluations(Store(str(tmp_path)))
    args = ("results", "--all-columns", "--store", str(tmp_path))
    widths = {}
    # 130: narrower than these columns' natural width, wider than they need with whole ids
    # (narrower still, the ids win: see the test above)
    for columns in ("130", None):
        got = invoke(*args, COLUMNS=columns)
        assert got.exit_code == 0, got.output
        widths[columns] = max(len(line) for line in got.stdout.splitlines())
    assert widths["130"] <= 130 < widths[None] <= PIPE_WIDTH


def test_same_in_every_run_leaves_out_what_no_run_has(tmp_path):
    store = Store(str(tmp_path))
    runs_with_evaluations(store)
    got = invoke("results", "--store", str(tmp_path), COLUMNS="200")
    assert got.exit_code == 0, got.output
    assert "same in every run: dataset=mnist, epochs=1, batch_size=100" in got.stdout
    assert "None" not in got.stdout and "sweep_id" not in got.stdout


def test_same_in_every_run_says_nothing_when_only_absent_parameters_agree():
    assert render.same_in_every_run({"sweep_id": None}) == ""
    assert render.same_in_every_run({"lr": 0.1, "sweep_id": None}) == "lr=0.1"


def test_a_bad_sort_or_where_is_spelled_as_the_option(tmp_path):
    runs_with_evaluations(Store(str(tmp_path)))
    for option, value in (("--sort", "-nope"), ("--where", "nope > 1")):
        got = invoke("results", "--store", str(tmp_path), option, value)
        assert got.exit_code == 2 and got.stdout == ""
        assert f"'{option}'" in got.stderr and value in got.stderr


def _command_raising(exc: BaseException, name: str | None = None):
    """A one-command app whose body raises `exc`, decorated as the CLI's commands are."""

    def command(eval_id: str = typer.Argument("x"), run: str = typer.Option("y")) -> None:
        raise exc

    one = typer.Typer()
    one.command()(friendly(name)(command) if name else friendly(command))
    return one


@pytest.mark.parametrize(
    ("param", "spelled"),
    [("eval_id", "EVAL_ID"), ("run", "--run"), ("batch_size", "--batch-size"), ("--x", "--x")],
)
def test_a_config_error_names_the_commands_own_spelling(param, spelled):
    got = runner.invoke(_command_raising(ConfigError(param, "is wrong"), "show"), [])
    assert got.exit_code == 2
    assert f"'{spelled}'" in got.stderr and "is wrong" in got.stderr


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("submit train", "interrupted: the Ray tasks were cancelled and nothing was written.\n"),
        ("evaluate", "interrupted: the Ray tasks were cancelled and nothing was written.\n"),
        ("sweep", "interrupted: every trial was stopped; finished trials keep their runs.\n"),
        ("results", "interrupted\n"),
        (None, "interrupted\n"),
    ],
)
def test_ctrl_c_says_what_the_typed_command_left_behind(name, said):
    got = runner.invoke(_command_raising(KeyboardInterrupt(), name), [])
    assert got.exit_code == 130 and got.stderr == said


def test_the_leaderboard_names_every_trial_and_its_failure():
    trial = {"run_id": "run-1", "lr": 0.1, "final_cost": 0.27, "train_seconds": 3.0}
    trial |= {"peak_rss_mib": 400.0, "accuracy": None, "status": "finished", "error": None}
    failed = trial | {"run_id": "run-2", "lr": 0.5, "final_cost": None, "status": "error"}
    failed["error"] = "batch_size 500 is larger than the 200 training images"
    summary = {"sweep_id": "sweep-1", "trials": [trial, failed], "varying": ["lr"]}
    summary |= {"best_run_id": "run-1", "wall_seconds": 9.0, "status": "finished"}
    table, line = render.leaderboard(summary)
    assert [c.header for c in table.columns] == [
        "#", "run_id", "lr", "final cost", "seconds", "peak MiB", "status"
    ]  # fmt: skip
    assert list(table.columns[-1].cells)[-1].startswith("error: batch_size 500")
    assert line == "1/2 trials finished in 9.0 s, best run-1; status finished"


def test_the_sample_is_drawn_in_text_with_a_bar_per_class():
    e = eval_row("run-1") | {"sample_pixels": [255] * 784, "eval_id": "eval-1"}
    lines = render.sample(e)
    assert lines[0] == "evaluation eval-1, test image 3757"
    assert lines[1:15] == ["@" * 56] * 14  # 28 rows two to a line, each pixel two wide
    assert lines[15] == "label 8, predicted 3"
    assert lines[16:] == [f"  {d}   0.100  ####" for d in range(10)]


def test_a_file_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "page.html"
    render.write_file("<p>one</p>", target)
    assert target.read_text() == "<p>one</p>"
    with pytest.raises(OSError):
        render.write_file("<p>two</p>", tmp_path / "no-such-folder" / "page.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


def test_show_writes_the_png_or_names_the_path_it_could_not(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.write_row("evaluations", eval_row("run-1"))
    png = tmp_path / "sample.png"
    got = invoke("show", "--store", store.location, "--png", str(png))
    assert got.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "missing" / "sample.png"
    failed = runner.invoke(app, ["show", "--store", store.location, "--png", str(bad)])
    assert failed.exit_code == 1 and f"--png {bad}" in failed.stderr
    assert not bad.parent.exists()


def test_results_json_keeps_the_stores_field_names(tmp_path):
    import pyarrow.parquet as pq

    store = Store(str(tmp_path))
    (row,) = runs_with_evaluations(store, 1)
    stored = pq.read_table(tmp_path / "runs" / f"{row['run_id']}.parquet").column_names
    (listed,) = json.loads(invoke("results", "--store", str(tmp_path), "--json").stdout)["runs"]
    assert "train_seconds" in listed and listed["train_seconds"] == row["train_seconds"]
    computed = {"last_cost", "best_cost", "accuracy", "eval_id", "checkpoint_epoch"}
    assert set(listed) - set(stored) == computed

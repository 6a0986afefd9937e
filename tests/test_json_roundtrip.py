"""`--json` prints data, never markup: text full of brackets goes through every command that
prints JSON, on the session's local Ray and through the Jobs API of a real head, and comes
back byte for byte as the store holds it, read by a strict parser (no NaN, no Infinity).

    PYTHONPATH=. python -m pytest tests/test_json_roundtrip.py -q

The model is a user's file in a folder whose name is a rich tag (`nets[bold]`), its source
holds `self.layers[i]`, `nn.ModuleList([...])`, `[/]`, `[link=x]`, `[0, 1]`, `[null]` and
an emoji code: a console that reads markup eats or crashes on each of them.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from conftest import VENV_BIN, client_env, ensure_ray
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.output import as_json
from mnist_ray.query import read_rows
from mnist_ray.store import Store

pytestmark = pytest.mark.cluster  # the lane: the session's Ray, a head

runner = CliRunner()

NET = textwrap.dedent(
    """
    from torch import nn

    # [bold]not bold[/bold], [/], [link=x]not a link[/link], [0, 1], [null], :smile:


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Flatten(), nn.Linear(784, 10)])

        def forward(self, x):
            for i in range(len(self.layers)):
                x = self.layers[i](x)
            return x
    """
)
FOLDER = "nets[bold]"  # a rich tag as a folder name: the model's spec holds it too
TAGS = "[bold]x[/] [link=x]y[/link] self.layers[i] [0, 1] :smile:"


def strict(text: str):
    """RFC 8259 JSON, one document: NaN, Infinity and -Infinity are refused."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def run(*args: str):
    wide = {"COLUMNS": "1000"}  # a table's cells whole, unwrapped
    got = runner.invoke(app, list(args), catch_exceptions=False, env=wide)
    assert got.exit_code == 0, got.output
    return got


def same_as_stored(printed: dict, store, table: str, key: str) -> bool:
    """Every value printed is the stored row's, in JSON's types (read_rows adds derived
    columns, such as a run's checkpoint_epoch, that the printed row need not have)."""
    (row,) = [r for r in read_rows(Store(str(store)), table)[0] if r[key] == printed[key]]
    held = strict(as_json(row))
    return printed == {k: held[k] for k in printed}


def stored(store, table: str, key: str, value: str) -> dict:
    (row,) = [r for r in read_rows(Store(str(store)), table)[0] if r[key] == value]
    return strict(as_json(row))


# ---- embedded: every command that prints JSON ---------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    ensure_ray()
    folder = tmp_path_factory.mktemp("mine") / FOLDER
    folder.mkdir()
    (folder / "net.py").write_text(NET)
    store = tmp_path_factory.mktemp("store")
    spec = f"{folder}/net.py:Net"
    common = ["--store", str(store), "--json"]
    trained = run("submit", "train", "--model", spec, "--epochs", "1", "--gpus", "0", *common)
    return spec, store, strict(trained.stdout)


def test_submit_train_prints_the_source_as_stored(embedded):
    spec, store, row = embedded
    assert row["model"] == spec and row["model_source"] == NET
    assert same_as_stored(row, store, "runs", "run_id")


def test_evaluate_and_show_print_the_row_as_stored(embedded):
    _, store, run_row = embedded
    evaluated = strict(run("evaluate", "--shards", "2", "--store", str(store), "--json").stdout)
    assert evaluated["run_id"] == run_row["run_id"]
    assert same_as_stored(evaluated, store, "evaluations", "eval_id")
    shown = strict(run("show", evaluated["eval_id"], "--store", str(store), "--json").stdout)
    assert shown == evaluated


def test_results_compare_query_and_models_keep_every_bracket(embedded):
    spec, store, row = embedded
    at = ["--store", str(store)]
    listed = strict(run("results", *at, "--json").stdout)
    assert [r["model"] for r in listed["runs"] if r["run_id"] == row["run_id"]] == [spec]
    compared = strict(run("compare", row["run_id"], row["run_id"], *at, "--json").stdout)
    assert spec in json.dumps(compared)
    sql = "select model, model_source from runs where run_id = '" + row["run_id"] + "'"
    queried = strict(run("query", sql, *at, "--json").stdout)
    assert queried == [{"model": spec, "model_source": NET}]
    literal = strict(run("query", f"select '{TAGS}' as s", *at, "--json").stdout)
    assert literal == [{"s": TAGS}]
    assert strict(run("models", "--json").stdout)  # a list of the built-in models


def test_tables_show_cells_as_they_are(embedded):
    spec, store, _ = embedded
    at = ["--store", str(store)]
    table = run("query", f"select '{TAGS}' as s", *at).stdout
    assert TAGS in table
    assert spec in run("results", *at, "--all-columns").stdout


def test_sweep_prints_its_definition_as_stored(embedded, tmp_path):
    spec, _, _ = embedded
    store = tmp_path / "sweep-store"
    got = run("sweep", "--model", spec, "--epochs", "1", "--store", str(store), "--json")
    summary = strict(got.stdout)
    row = stored(store, "sweeps", "sweep_id", summary["sweep_id"])
    assert summary["definition"] == row["definition"]  # byte for byte
    assert strict(row["definition"])["optimizer"] == [None]  # stored as [null]
    assert spec in summary["definition"]


def test_an_error_line_keeps_its_brackets(tmp_path):
    missing = tmp_path / "[bold]no-store[/]"
    got = runner.invoke(app, ["results", "--store", str(missing)])
    assert got.exit_code == 1
    assert "[bold]no-store[/]" in got.stderr, got.stderr


# ---- through the Jobs API of a real head -------------------------------------------------------


def test_through_the_jobs_api_every_json_is_the_stored_value(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    mine = tmp_path / "mine"
    (mine / FOLDER).mkdir(parents=True)
    (mine / FOLDER / "net.py").write_text(NET)
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)

    def job(*args: str):
        got = subprocess.run(
            [f"{VENV_BIN}/mnist-ray", *args, "--address", cluster.dashboard, "--json"],
            env=env,
            cwd=mine,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert got.returncode == 0, got.stderr[-3000:]
        return strict(got.stdout)

    at = ["--store", str(store)]
    row = job("submit", "train", "--model", f"{FOLDER}/net.py:Net", "--epochs", "1", *at)
    assert row["model_source"] == NET
    assert same_as_stored(row, store, "runs", "run_id")
    evaluated = job("evaluate", "--shards", "2", *at)
    assert same_as_stored(evaluated, store, "evaluations", "eval_id")
    summary = job("sweep", "--model", f"{FOLDER}/net.py:Net", "--epochs", "1", *at)
    sweep = stored(store, "sweeps", "sweep_id", summary["sweep_id"])
    assert summary["definition"] == sweep["definition"]
    assert strict(sweep["definition"])["optimizer"] == [None]

    listed = subprocess.run(
        [f"{VENV_BIN}/mnist-ray", "jobs", "list", "--address", cluster.dashboard, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    commands = {j["command"] for j in strict(listed.stdout)}
    assert {"submit train", "evaluate", "sweep"} <= commands

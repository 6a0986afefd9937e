"""Option names belong to the command line: lower layers name a parameter as the code does
(`store`, `batch_size`) and the CLI spells it as the command's own option (`--store`).

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_option_names.py -q
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import stored_run
from typer.testing import CliRunner

import mnist_ray
from mnist_ray.cli import app
from mnist_ray.store import Store, StoreError

runner = CliRunner()
PACKAGE = Path(mnist_ray.__file__).parent
CLI_MODULES = {"cli.py", "cli_store.py", "ui.py", "helptext.py"}  # the CLI
# jobs.py builds and reads the command line a job runs (`entrypoint`, `submit_cli`).
COMMAND_LINES = {("jobs.py", "entrypoint"), ("jobs.py", "submit_cli")}
OPTION = re.compile(r"^--[a-z]")


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and ast.get_docstring(node, clean=False) is not None
    }


def _allowed(module: str, tree: ast.AST) -> set[int]:
    """String constants inside a typer declaration (`typer.Option("--json", ...)`) or a
    function that builds a command line."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        typer_call = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "typer"
        )
        builds_argv = isinstance(node, ast.FunctionDef) and (module, node.name) in COMMAND_LINES
        if typer_call or builds_argv:
            allowed |= {id(c) for c in ast.walk(node) if isinstance(c, ast.Constant)}
    return allowed


def option_spellings(path: Path) -> list[str]:
    """`file:line: '--text'` for each string constant (or f-string's first part) that starts
    with an option's spelling, outside docstrings and what _allowed lets through."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree) | _allowed(path.name, tree)
    return [
        f"{path.name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and OPTION.match(node.value)
        and id(node) not in skip
    ]


def test_no_layer_below_the_cli_spells_an_option():
    found = [
        hit
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name not in CLI_MODULES
        for hit in option_spellings(path)
    ]
    assert found == [], "name the parameter (about='store'); the CLI spells it:\n" + "\n".join(
        found
    )


def test_the_scan_finds_a_spelled_option(tmp_path):
    """The check above can fail: a message written as the CLI spells it is found."""
    bad = tmp_path / "store.py"
    bad.write_text(
        '"""Doc: --store is fine here."""\n'
        "def f(location):\n"
        '    raise StoreError(f"--store {location}: no such store")\n'
        "typer.Option('--json')\n"
    )
    assert option_spellings(bad) == ["store.py:3: '--store '"]


def test_a_lower_layer_error_names_the_parameter_and_the_cli_spells_it(tmp_path):
    missing = tmp_path / "no-such-store"
    with pytest.raises(StoreError) as got:
        Store(missing).check_exists()
    said = got.value
    assert (said.about, said.value) == ("store", str(missing))
    assert str(said) == f"store {missing}: no such store (nothing at that path)"
    result = runner.invoke(app, ["results", "--store", str(missing)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr == f"Error: --store {missing}: no such store (nothing at that path)\n"


def test_an_option_named_otherwise_is_spelled_as_the_command_has_it(tmp_path):
    """report's `eval_id` parameter is its `--eval` option."""
    store = Store(tmp_path / "store")
    stored_run(store)
    result = runner.invoke(app, ["report", "--eval", "eval-nope", "--store", store.location])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        "Error: --eval eval-nope: no evaluation of the chosen runs; see `mnist-ray results`\n"
    )

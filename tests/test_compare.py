"""`mnist-ray compare`: runs side by side on a real folder store."""

from __future__ import annotations

import json

from conftest import eval_row, run_row
from typer.testing import CliRunner

from mnist_ray.cli import app
from mnist_ray.compare import sparkline
from mnist_ray.store import Store

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def stored(tmp_path) -> Store:
    store = Store(tmp_path)
    confusion = [[0] * 100, [0] * 100]
    confusion[0][4 * 10 + 9], confusion[1][4 * 10 + 9] = 10, 35  # 4 read as 9: 25 more
    confusion[0][7 * 10 + 1], confusion[1][7 * 10 + 1] = 8, 5
    for k, (lr, epochs, costs) in enumerate(((0.1, 3, [0.6, 0.4, 0.3]), (0.01, 2, [0.9, 0.8]))):
        store.write_row(
            "runs", run_row(f"run-cmp{k}", "w", "s", lr=lr, epochs=epochs) | {"epoch_costs": costs}
        )
        e = eval_row(f"run-cmp{k}", accuracy=0.92 - k / 10)
        e["per_class_accuracy"] = [0.9] * 9 + [0.9 - k / 10]
        e["confusion"] = confusion[k]
        store.write_row("evaluations", e)
    return store


def test_compare_shows_differences_costs_and_confusion_changes(tmp_path):
    stored(tmp_path)
    got = invoke("compare", "run-cmp0", "run-cmp1", "--store", str(tmp_path))
    assert got.exit_code == 0, got.output
    header = next(line for line in got.stdout.splitlines() if "run_id" in line)
    assert "lr" in header and "epochs" in header and "seed" not in header
    assert "0.300000000" in got.stdout and "0.800000000" in got.stdout
    assert "true 4 -> predicted 9: 10 -> 35 (+25)" in got.stdout
    assert "-0.1000" in got.stdout  # class 9's accuracy delta
    data = json.loads(
        invoke("compare", "run-cmp0", "run-cmp1", "--store", str(tmp_path), "--json").stdout
    )
    assert [r["best_cost"] for r in data["runs"]] == [0.3, 0.8]
    assert data["epochs"][2] == {"epoch": 3, "run-cmp0": 0.3, "run-cmp1": None}
    assert data["against_first"][0]["confusion"][0]["delta"] == 25
    assert data["runs"][0]["curve"] == sparkline([0.6, 0.4, 0.3], 0.3, 0.9)


def test_sparkline_spans_the_shared_scale():
    assert sparkline([0.0, 0.5, 1.0], 0.0, 1.0) == "▁▅█"


def test_compare_fails_on_an_unknown_run_or_a_single_run(tmp_path):
    stored(tmp_path)
    got = invoke("compare", "run-cmp0", "run-nope", "--store", str(tmp_path))
    assert got.exit_code == 1 and got.stdout == ""
    # Named as the argument it is: compare has no --run option.
    assert got.stderr == (
        f"Error: RUN run-nope: no such run in {tmp_path}; "
        f"see `mnist-ray results --store {tmp_path}`\n"
    )
    several = invoke("compare", "run-cmp", "run-cmp1", "--store", str(tmp_path))
    assert several.exit_code == 1
    assert several.stderr.startswith("Error: RUN run-cmp: matches 2 runs (run-cmp0, run-cmp1)")
    assert invoke("compare", "run-cmp0", "--store", str(tmp_path)).exit_code == 2
    assert "Example: mnist-ray compare" in invoke("compare", "--help").stdout

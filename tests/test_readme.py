"""The README and docs/ say what the code does: the example's numbers are what the code
computes, the store tables are the real schema, the query lines run as written, the test
command is the one CI runs, and every file, link and test they name exists.

    PYTHONPATH=. python -m pytest tests/test_readme.py -q
"""

from __future__ import annotations

import re
import subprocess

import pytest
import reference as ref
from conftest import REPO, client_env, eval_row, stored_run

from mnist_ray.evaluate import evaluate_shard, merge, sample_index
from mnist_ray.schema import EVALUATIONS, RUNS, SWEEPS
from mnist_ray.store import Store

README = (REPO / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((REPO / "docs").glob("*.md"))}


def indented(text: str, start: str) -> list[str]:
    """The text's indented command lines that begin with `start`."""
    return [ln.strip() for ln in text.splitlines() if ln.startswith(f"    {start}")]


def test_the_readmes_example_is_what_the_code_computes(tutorial_run, mnist_test):
    """The costs, accuracy and sample the README shows, against a training and an
    evaluation run here with the defaults (the lines `submit train` and `evaluate` print)."""
    costs = dict(re.findall(r"^    Epoch: (\d{4}) cost = (\d\.\d{9})$", README, re.MULTILINE))
    assert set(costs) == {"0001", "0015"}, costs
    assert costs["0001"] == f"{tutorial_run.epoch_costs[0]:.9f}"
    # the last epoch's last digit follows the host (reference.COST_TOLERANCE)
    assert abs(float(costs["0015"]) - tutorial_run.epoch_costs[-1]) <= ref.COST_TOLERANCE
    (final,) = re.findall(r"final cost (\d\.\d{9})", README)
    assert final == costs["0015"]

    images, labels = mnist_test
    sample = sample_index(777, len(labels))
    got = merge([evaluate_shard(tutorial_run.weights, images, labels, sample=sample)])
    s, p = got["sample"], got["sample"]["probabilities"]
    said = [
        f"accuracy {got['accuracy']:.4f} ({got['correct']}/{got['total']}) over 4 shard(s)",
        f"sample {s['index']}: label {s['label']}, predicted {s['prediction']} "
        f"(p={p[s['prediction']]:.3f}; p[{s['label']}]={p[s['label']]:.3f})",
    ]
    for line in said:
        assert line in README, line


def test_the_reference_page_shows_what_tests_reference_holds():
    """docs/reference.md prints the classic program's output; tests/reference.py holds the
    same numbers for the tests. Neither may drift from the other."""
    page = DOCS["reference.md"]
    printed = re.findall(r"^    Epoch: (\d{4}) cost = (\d\.\d{9})$", page, re.MULTILINE)
    assert [int(e) for e, _ in printed] == list(range(1, 16))
    assert [float(c) for _, c in printed] == ref.TUTORIAL_COSTS
    accuracy = re.search(r"^    Accuracy: (0\.\d+)$", page, re.MULTILINE)
    assert accuracy and round(float(accuracy.group(1)), 4) == ref.TUTORIAL_ACCURACY
    assert f"Label:  {ref.SAMPLE_LABEL}\n" in page
    assert f"Prediction:  {ref.SAMPLE_PREDICTION}\n" in page
    p3, p8 = ref.SAMPLE_SOFTMAX[ref.SAMPLE_PREDICTION], ref.SAMPLE_SOFTMAX[ref.SAMPLE_LABEL]
    assert (
        f"random sample {ref.SAMPLE_INDEX}: label {ref.SAMPLE_LABEL}, predicted "
        f"{ref.SAMPLE_PREDICTION} (softmax {p3:.3f} for {ref.SAMPLE_PREDICTION}, "
        f"{p8:.3f} for {ref.SAMPLE_LABEL})"
    ) in page
    scaled = re.search(r"like training: (0\.\d+)$", page, re.MULTILINE)
    assert scaled and round(float(scaled.group(1)), 4) == ref.SCALED_ACCURACY
    assert round(ref.SCALED_ACCURACY * 10000) == ref.SCALED_CORRECT


@pytest.mark.parametrize(
    "table, schema", [("runs", RUNS), ("evaluations", EVALUATIONS), ("sweeps", SWEEPS)]
)
def test_the_store_table_lists_the_schemas_columns(table, schema):
    (row,) = [ln for ln in DOCS["store.md"].splitlines() if ln.startswith(f"| {table} | ")]
    assert re.findall(r"`(\w+)`", row) == schema.names


def test_the_query_lines_run_as_written(tmp_path, mnist_test):
    """Run from a folder holding the default store, as a user would after a run: a real
    evaluation of a stored run, whose accuracy the DuckDB line must print."""
    store = Store(tmp_path / "mnist-ray-store")
    run = stored_run(store, scale=0.01)
    weights = store.read_weights(run)
    images, labels = mnist_test
    got = merge([evaluate_shard(weights, images, labels)])
    evaluation = eval_row(run["run_id"], accuracy=got["accuracy"]) | {"correct": got["correct"]}
    store.write_row("evaluations", evaluation)
    lines = indented(DOCS["store.md"], 'python -c "import duckdb') + indented(
        DOCS["store.md"], 'python -c "import pyarrow'
    )
    assert len(lines) == 2, lines
    outputs = []
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=client_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert run["run_id"] in done.stdout, done.stdout
        outputs.append(done.stdout)
    assert 0 < got["accuracy"] < 1 and str(got["accuracy"]) in outputs[0], outputs[0]


def test_the_readmes_test_command_is_the_line_ci_runs():
    (command,) = indented(
        README, "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'"
    )
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert [ln for ln in ci if ln.startswith(command)] == [f"{command} || status=$?"]


def test_every_link_in_the_readme_and_docs_opens():
    pages = {REPO / "README.md": README} | {REPO / "docs" / n: t for n, t in DOCS.items()}
    pages[REPO / "jobs" / "README.md"] = (REPO / "jobs" / "README.md").read_text()
    for path, text in pages.items():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name}: {target}"
    for name in ("commands", "store", "cluster", "design", "speed", "reference"):
        assert f"(docs/{name}.md)" in README, name


def test_every_test_the_docs_name_exists():
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))
    named = set()
    for text in DOCS.values():
        named |= set(re.findall(r"`(test_\w+)`", text))
    assert named, "the docs name the tests behind their claims"
    assert sorted(named - defined) == []


def test_every_file_the_docs_name_exists():
    named = set()
    for text in [README, *DOCS.values()]:
        named |= set(re.findall(r"`((?:tests|bench|jobs|docker)/[\w./-]+\.\w+)`", text))
    assert named
    assert sorted(n for n in named if not (REPO / n).exists()) == []

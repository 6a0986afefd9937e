"""`mnist-ray report`: a self-contained page, opened in headless Debian Chromium.

The browser check: no request leaves the page (every resource and network request is a
data: URI or the file itself), no console error, every <img> decoded with a non-zero
width, the run ids and the accuracy figures in the page, and a screenshot that is not
blank. A page broken on purpose must fail the same check.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from conftest import eval_row, run_row
from typer.testing import CliRunner

from mnist_ray import report
from mnist_ray.cli import app
from mnist_ray.schema import RUNS
from mnist_ray.store import Store

runner = CliRunner()
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver; never a downloaded one


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def fill(store: Store) -> list[dict]:
    """Three runs that differ in lr and epochs, each evaluated, with misclassified images."""
    rng = np.random.default_rng(0)
    runs = []
    for k, (lr, epochs, acc) in enumerate(((0.1, 4, 0.9226), (0.01, 3, 0.8512), (0.5, 4, 0.9031))):
        costs = [0.9 / (1 + i * lr * 10) for i in range(epochs)]
        row = run_row(f"run-report-{k}", "w", "s", lr=lr, epochs=epochs) | {"epoch_costs": costs}
        store.write_row("runs", row)
        e = eval_row(row["run_id"], accuracy=acc)
        confusion = rng.integers(0, 20, (10, 10))
        np.fill_diagonal(confusion, 900)
        e |= {
            "confusion": confusion.reshape(-1).tolist(),
            "sample_pixels": rng.integers(0, 256, 784).tolist(),
            "misclassified_index": list(range(3, 78, 3)),
            "misclassified_label": [i % 10 for i in range(25)],
            "misclassified_prediction": [(i + 3) % 10 for i in range(25)],
            "misclassified_pixels": [bytes(p) for p in rng.integers(0, 256, (25, 784), np.uint8)],
        }
        store.write_row("evaluations", e)
        runs.append(row)
    return runs


def test_report_has_help():
    got = invoke("report", "--help")
    assert got.exit_code == 0 and "Example: mnist-ray report" in got.stdout


def test_report_writes_one_self_contained_page(tmp_path):
    runs = fill(Store(tmp_path / "s"))
    page = tmp_path / "report.html"
    got = invoke("report", "--store", str(tmp_path / "s"), "--out", str(page))
    assert got.exit_code == 0, got.output
    assert got.stdout.strip() == str(page)
    text = page.read_text()
    for r in runs:
        assert r["run_id"] in text
    assert "0.9226" in text and "0.8512" in text
    assert text.count("<img ") == 6  # curves, accuracy vs params, heatmap, per class, sample, grid
    for needle in ("http:", "https:", "<script", "<link", "@import", "url("):
        assert needle not in text, needle
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_of_chosen_runs_and_its_failures(tmp_path):
    fill(Store(tmp_path / "s"))
    page = tmp_path / "two.html"
    got = invoke(
        "report", "run-report-0", "run-report-2", "--store", str(tmp_path / "s"), "--out", str(page)
    )
    assert got.exit_code == 0, got.output
    assert "run-report-1" not in page.read_text() and "run-report-2" in page.read_text()
    missing = invoke("report", "run-nope", "--store", str(tmp_path / "s"), "--out", str(page))
    assert (
        missing.exit_code == 1 and "run-nope" in missing.stderr and "no such run" in missing.stderr
    )
    nowhere = tmp_path / "no-such-folder" / "r.html"
    bad_out = invoke("report", "--store", str(tmp_path / "s"), "--out", str(nowhere))
    assert bad_out.exit_code == 1 and str(nowhere) in bad_out.stderr
    empty = invoke("report", "--store", str(tmp_path / "empty"), "--out", str(page))
    assert empty.exit_code == 1 and "no runs yet" in empty.stderr


def fill_models(store: Store) -> list[dict]:
    """Runs of three models; the cnn's is not evaluated, the mlp's best is its second."""
    runs = []
    for k, (model, acc) in enumerate(
        (("softmax", 0.9226), ("mlp", 0.9712), ("mlp", 0.9803), ("cnn", None))
    ):
        row = run_row(f"run-model-{k}", "w", "s", model=model) | {"epoch_costs": [0.6, 0.3]}
        store.write_row("runs", row)
        if acc is not None:
            store.write_row("evaluations", eval_row(row["run_id"], accuracy=acc))
        runs.append(row)
    return runs


def test_report_draws_accuracy_by_model_when_the_runs_differ_in_model(tmp_path):
    fill_models(Store(tmp_path / "s"))
    page = tmp_path / "models.html"
    got = invoke("report", "--store", str(tmp_path / "s"), "--out", str(page))
    assert got.exit_code == 0, got.output
    text = page.read_text()
    assert "<h2>Accuracy by model</h2>" in text and "alt='accuracy by model'" in text
    # the bars' numbers, also as a table: each model's best, the cnn not evaluated
    table = text[text.index("<h2>Accuracy by model</h2>") :]
    for cells in ("<td>softmax</td><td>0.9226</td><td>1</td>", "<td>mlp</td><td>0.9803</td>",
                  "<td>cnn</td><td>-</td><td>1</td>"):  # fmt: skip
        assert cells in table, cells
    # runs of one model only: no such chart
    one = tmp_path / "one.html"
    invoke(
        "report", "run-model-1", "run-model-2", "--store", str(tmp_path / "s"), "--out", str(one)
    )
    assert "accuracy by model" not in one.read_text().lower()


def test_best_by_model_takes_each_models_best_finished_evaluated_run():
    runs = [
        {"model": "mlp", "accuracy": 0.95},
        {"model": "softmax", "accuracy": None},
        {"model": "mlp", "accuracy": 0.97},
        {"model": "cnn", "accuracy": 0.99, "status": "interrupted"},  # not a finished run
        {"model": "mlp", "accuracy": 0.96, "status": "finished"},
    ]
    assert report.best_by_model(runs) == {"mlp": 0.97, "softmax": None, "cnn": None}


needs_status = pytest.mark.skipif(
    "status" not in RUNS.names, reason="the runs table has no status column in this version"
)


@needs_status
def test_unfinished_runs_are_listed_with_their_status_and_never_drawn(tmp_path):
    store = Store(tmp_path / "s")
    fill(store)  # three finished, evaluated runs
    outcome = dict.fromkeys(("weights_uri", "weights_sha256", "train_seconds", "device"))
    unfinished = {
        # the epochs done before the interruption: no final cost for all that
        "run-report-stopped": {"status": "interrupted", "epoch_costs": [0.777777777, 0.555555555]},
        "run-report-failed": {"status": "failed", "epoch_costs": [], "failure": "out of memory"},
    }
    for run_id, columns in unfinished.items():
        store.write_row("runs", run_row(run_id, "w", "s", lr=0.2) | outcome | columns)
    page = tmp_path / "report.html"
    got = invoke("report", "--store", str(tmp_path / "s"), "--out", str(page))
    assert got.exit_code == 0, got.output
    text = page.read_text()
    assert "<th>status</th>" in text
    note = text[text.index("Not finished, so not drawn: ") :].split("</p>")[0]
    assert "run-report-stopped (interrupted" in note
    assert "run-report-failed (failed: out of memory)" in note
    assert "0.555555555" not in text and "0.777777777" not in text  # no cost of theirs shown
    row = text[text.index("<td>run-report-stopped</td>") :].split("</tr>")[0]
    assert "<td>interrupted" in row
    assert text.count("<img ") == 6  # the same pictures as the three finished runs make


@needs_status
def test_a_report_of_only_unfinished_runs_says_there_is_nothing_to_draw(tmp_path):
    store = Store(tmp_path / "s")
    row = run_row("run-report-failed", "w", "s") | {"status": "failed", "epoch_costs": []}
    store.write_row("runs", row | dict.fromkeys(("weights_uri", "weights_sha256")))
    page = tmp_path / "report.html"
    got = invoke("report", "--store", str(tmp_path / "s"), "--out", str(page))
    assert got.exit_code == 0, got.output
    text = page.read_text()
    assert "No finished run to draw." in text and "run-report-failed (failed)" in text
    assert "<img " not in text


# ---- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMEDRIVER, os.X_OK) and shutil.which("chromium")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing; .ci/run installs them")
        pytest.skip("no Debian chromium/chromium-driver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,900")
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_problems(driver, path) -> list[str]:
    """Everything wrong with the page as the browser sees it; [] for a good page."""
    url = path.resolve().as_uri()
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    driver.get(url)
    driver.execute_async_script(
        "const done = arguments[0];"
        "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
        ".then(() => done())"
    )
    problems = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]["url"]
            if not (request.startswith("data:") or request == url):
                problems.append(f"request left the page: {request}")
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    problems += [f"resource fetched: {r}" for r in resources if not r.startswith("data:")]
    problems += [
        f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"
    ]
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    problems += [f"image not decoded: {alt}" for alt, ok, width in images if not (ok and width > 0)]
    if not images:
        problems.append("no images")
    return problems


def screenshot_is_not_blank(driver) -> bool:
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
    return shot.std() > 10 and len(np.unique(shot)) > 20


def test_the_report_in_a_real_browser(browser, tmp_path):
    runs = fill(Store(tmp_path / "s"))
    page = tmp_path / "report.html"
    assert invoke("report", "--store", str(tmp_path / "s"), "--out", str(page)).exit_code == 0
    assert page_problems(browser, page) == []
    text = browser.execute_script("return document.body.innerText")
    assert all(r["run_id"] in text for r in runs)
    assert "0.9226" in text and "0.8512" in text and "0.9031" in text
    widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert len(widths) == 6 and min(widths) > 100
    assert screenshot_is_not_blank(browser)


def test_the_model_report_in_a_real_browser(browser, tmp_path):
    fill_models(Store(tmp_path / "s"))
    page = tmp_path / "report.html"
    assert invoke("report", "--store", str(tmp_path / "s"), "--out", str(page)).exit_code == 0
    assert page_problems(browser, page) == []
    alts = browser.execute_script("return Array.from(document.images).map(i => i.alt)")
    assert "accuracy by model" in alts
    assert "0.9803" in browser.execute_script("return document.body.innerText")


def test_the_browser_check_catches_a_broken_page(browser, tmp_path):
    fill(Store(tmp_path / "s"))
    page = tmp_path / "report.html"
    invoke("report", "--store", str(tmp_path / "s"), "--out", str(page))
    good = page.read_text()
    start = good.index("base64,") + len("base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(good[:start] + "AAAA" + good[start + 4 :])  # the first image's header
    problems = page_problems(browser, broken)
    assert any(p.startswith("image not decoded: training cost per epoch") for p in problems), (
        problems
    )
    outside = tmp_path / "outside.html"
    outside.write_text(
        good.replace("</body>", "<img alt='x' src='http://127.0.0.1:9/x.png'></body>")
    )
    problems = page_problems(browser, outside)
    assert any("request left the page: http://127.0.0.1:9/x.png" in p for p in problems), problems

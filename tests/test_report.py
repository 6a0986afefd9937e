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

from mnist_ray.cli import app
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

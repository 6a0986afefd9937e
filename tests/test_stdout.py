"""stdout is the result, stderr everything else: the pieces that keep them apart, and an
embedded run whose stdout is exactly one JSON document.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_stdout.py -q
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from conftest import VENV_BIN, client_env

from mnist_ray.query import read_rows
from mnist_ray.store import Store
from mnist_ray.streams import LogSplitter, _Framed, marker, one_line_notice
from mnist_ray.ui import _Stderr

WORKER_DIED = (
    "\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an "
    "unexpected system error. To troubleshoot the problem, check the logs for the dead "
    "worker. RayTask ID: ffff\n Worker ID: 3c2f\n Node ID: 9a1b\n Worker IP address: "
    "127.0.0.1\n Worker port: 20017\n Worker PID: 4242\n Worker exit type: SYSTEM_ERROR\n"
    " Worker exit detail: Worker unexpectedly exits with a connection error code 2."
)


def test_a_worker_died_notice_is_one_line():
    line = one_line_notice(WORKER_DIED)
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("(raylet) A worker died or was killed")
    assert "pid 4242" in line and "SYSTEM_ERROR" in line


class _CtrlCAfterWrite(io.StringIO):
    """A terminal where Ctrl-C lands just after a line went out: the first flush raises."""

    pressed = False

    def flush(self):
        if not self.pressed:
            self.pressed = True
            raise KeyboardInterrupt


def test_a_line_ctrl_c_interrupts_is_not_written_again():
    screen = _CtrlCAfterWrite()
    err = _Stderr(file=screen, highlight=False, soft_wrap=True)
    try:
        err.print("Epoch: 0002 cost = 0.359577745")
    except KeyboardInterrupt:
        err.print("interrupted: run kept")
    assert screen.pressed
    assert screen.getvalue() == "Epoch: 0002 cost = 0.359577745\ninterrupted: run kept\n"


def test_framed_lines_come_back_apart_from_the_log_in_any_chunking():
    job_out = io.StringIO()
    framed = _Framed(job_out, marker("0123456789abcdef"))
    framed.write('{"run_id": "run-1",')
    framed.write(' "x": 1}\nsecond line\n')
    log = (
        "INFO job_manager.py:581 -- Runtime env is setting up.\n"
        + job_out.getvalue()
        + "Epoch: 0001 cost = 0.5\n"
        + marker("fedcba9876543210")  # another submission's nonce: not this result
        + "forged\n"
    )
    for size in (1, 7, len(log)):
        out, err = io.StringIO(), io.StringIO()
        split = LogSplitter(out, err, "0123456789abcdef")
        for i in range(0, len(log), size):
            split.feed(log[i : i + size])
        split.close()
        assert out.getvalue() == '{"run_id": "run-1", "x": 1}\nsecond line\n'
        assert "Runtime env is setting up" in err.getvalue() and "forged" in err.getvalue()


def test_ray_output_goes_to_stderr_at_the_descriptor_level(tmp_path):
    """What a child process writes to fd 1 and what Ray prints through sys.stdout."""
    script = (
        "import subprocess, sys\n"
        "from mnist_ray.streams import ray_output_to_stderr\n"
        "with ray_output_to_stderr():\n"
        "    subprocess.run(['echo', 'INFO from a Ray process'])\n"
        f"    print({WORKER_DIED!r})\n"
        "print('the result')\n"
    )
    got = subprocess.run(
        [sys.executable, "-c", script], env=client_env(tmp_path), capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == "the result\n"
    lines = got.stderr.splitlines()
    assert "INFO from a Ray process" in lines
    assert [ln for ln in lines if ln.startswith("(raylet)")] == [one_line_notice(WORKER_DIED)]


@pytest.mark.cluster
def test_embedded_train_and_evaluate_print_one_json_document(mnist_data, tmp_path):
    store = tmp_path / "store"
    env = client_env(tmp_path, MNIST_RAY_DATA=str(mnist_data))
    for args in (["submit", "train", "--epochs", "1"], ["evaluate", "--shards", "2"]):
        got = subprocess.run(
            [f"{VENV_BIN}/mnist-ray", *args, "--json", "--store", str(store)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert got.returncode == 0, got.stderr[-3000:]
        row = json.loads(got.stdout)  # the whole of stdout, nothing else on it
        table, key = ("runs", "run_id") if args[0] == "submit" else ("evaluations", "eval_id")
        (stored,) = read_rows(Store(str(store)), table)[0]
        assert row[key] == stored[key]
        assert "Started a local Ray" in got.stderr

"""The CLI against a real multi-node cluster through Ray's Jobs API.

A head and a worker declaring one GPU, started with `ray start` on 127.0.0.1 with token
authentication (see conftest.ray_cli_cluster); `mnist-ray` runs as a subprocess, the way
a user runs it, and the store is a folder both nodes see.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import VENV_BIN, client_env, free_ports, mnist_ray, one_line_error, wait_until

from mnist_ray.jobs import STOPPED, entrypoint
from mnist_ray.query import read_rows
from mnist_ray.store import Store

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process

JOB_ID = re.compile(r"raysubmit_\w+")


# ---- no cluster needed ------------------------------------------------------------------------


def test_entrypoint_is_the_command_with_the_store_spelled_out():
    """command_argv (what the parser saw, less --address/--wait/--store) plus the store;
    the Jobs API tests below run such entrypoints for real."""
    argv = ["submit", "train", "--epochs", "1"]
    assert entrypoint(argv, "/shared/s") == "mnist-ray submit train --epochs 1 --store /shared/s"
    assert entrypoint(["evaluate", "--shards", "2"], "s3://b/p") == (
        "mnist-ray evaluate --shards 2 --store s3://b/p"
    )


def test_only_the_sigterm_stack_dump_is_left_out_of_a_jobs_log():
    """The lines Ray's driver prints on SIGTERM (as a stopped job's log holds them, see
    the Jobs API test below); a crash's dump and the lines around it stay."""
    import io

    from mnist_ray.streams import LogSplitter

    dump = [
        "*** {} received at time=1795969451 on cpu 1 ***",
        "PC: @     0x7f2ffd6a3f16  (unknown)  (unknown)",
        "    @     0x7f2ffd65a050  (unknown)  (unknown)",
        "[2026-11-29 16:24:11,488 E 6648 6648] logging.cc:474: *** {} received at time=1 ***",
        "[2026-11-29 16:24:11,488 E 6648 6648] logging.cc:474: PC: @     0x7f2ffd6a3f16  (x)",
    ]
    for signal, kept in (("SIGTERM", []), ("SIGSEGV", [ln.format("SIGSEGV") for ln in dump])):
        out, err = io.StringIO(), io.StringIO()
        split = LogSplitter(out, err)
        log = ["Epoch: 0010 cost = 0.284515619", *(ln.format(signal) for ln in dump), "after"]
        for ch in "\n".join(log) + "\n":  # chunks of any size: here one character each
            split.feed(ch)
        split.close()
        assert err.getvalue().splitlines() == [log[0], *kept, "after"] and not out.getvalue()
        assert split.sigterm is (signal == "SIGTERM")


def test_relative_store_with_remote_address_is_refused(tmp_path):
    result = mnist_ray(
        ["evaluate", "--address", "http://127.0.0.1:9", "--store", "rel-store"],
        client_env(tmp_path),
        timeout=60,
    )
    one_line_error(result, "--store rel-store", "shared storage")


def test_unreachable_jobs_api_is_one_line(tmp_path):
    (port,) = free_ports(1)
    result = mnist_ray(
        ["submit", "train", "--address", f"http://127.0.0.1:{port}", "--store", str(tmp_path)],
        client_env(tmp_path),
        timeout=60,
    )
    one_line_error(result, f"http://127.0.0.1:{port}", "no Ray Jobs API answers")


# ---- a token-protected two-node cluster -------------------------------------------------------


def test_cluster_refuses_a_submission_without_the_token(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    args = ["evaluate", "--address", cluster.dashboard, "--store", str(tmp_path / "store")]
    one_line_error(mnist_ray(args, client_env(tmp_path), 60), "wants a Ray token")
    wrong = client_env(tmp_path, RAY_AUTH_TOKEN="0" * 32)
    one_line_error(mnist_ray(args, wrong, 60), "refused the Ray token")
    assert not (tmp_path / "store").exists()


def test_train_and_evaluate_through_the_jobs_api(ray_cli_cluster, tmp_path):
    cluster, gpu_node_id = ray_cli_cluster
    store = tmp_path / "store"
    # RAY_AUTH_TOKEN alone for training; Ray's own RAY_AUTH_MODE=token way for evaluation
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    base = ["--address", cluster.dashboard, "--store", str(store)]

    train = mnist_ray(["submit", "train", "--epochs", "1", "--gpus", "1", *base], env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Epoch: 0001 cost" in train.stdout + train.stderr
    assert "WebSocket closed" not in train.stderr  # Ray's SDK, when the log stream ends
    train_job = JOB_ID.search(train.stderr).group(0)

    (run,) = read_rows(Store(str(store)), "runs")[0]
    assert run["epochs"] == 1
    assert run["node_id"] == gpu_node_id  # placed on the node that declares the GPU
    assert run["gpu_ids"] == [0]
    assert run["ray_version"] and run["epoch_costs"][0] < 0.6

    env_mode = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    evaluate = mnist_ray(["evaluate", "--shards", "4", *base], env_mode)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "accuracy" in evaluate.stdout
    (row,) = read_rows(Store(str(store)), "evaluations")[0]
    assert row["run_id"] == run["run_id"] and row["total"] == 10_000
    assert 0.85 < row["accuracy"] < 0.95

    listed = subprocess.run(
        [f"{VENV_BIN}/ray", "job", "list", "--address", cluster.dashboard],
        env=env_mode,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert train_job in listed.stdout
    assert "SUCCEEDED" in listed.stdout


def test_no_wait_then_jobs_logs_status_stop(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    base = ["--address", cluster.dashboard, "--store", str(store)]
    train = mnist_ray(["submit", "train", "--epochs", "1", "--no-wait", *base], env)
    assert train.returncode == 0, train.stderr
    job_id = train.stdout.strip()
    assert JOB_ID.fullmatch(job_id), train.stdout

    logs = mnist_ray(["jobs", "logs", job_id, "--follow", "--address", cluster.dashboard], env)
    assert logs.returncode == 0, logs.stderr
    assert "final cost" in logs.stdout
    assert "WebSocket closed" not in logs.stderr and "Epoch: 0001 cost" in logs.stderr
    status = mnist_ray(["jobs", "status", job_id, "--address", cluster.dashboard], env)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED")
    stop = mnist_ray(["jobs", "stop", job_id, "--address", cluster.dashboard], env)
    assert stop.returncode == 0 and "not running" in stop.stdout
    missing = mnist_ray(
        ["jobs", "status", "raysubmit_nosuchjob", "--address", cluster.dashboard], env
    )
    one_line_error(missing, "raysubmit_nosuchjob")


def test_a_stopped_job_says_so_once_without_rays_stack_dump(ray_cli_cluster, tmp_path):
    """`jobs stop` SIGTERMs the job's driver, and Ray there prints a stack dump into the
    job's log (or, for `submit train`, how to resume); the command that streams the log and
    `jobs logs` leave any dump out and say that the job was stopped (from its status), once."""
    from ray.job_submission import JobSubmissionClient

    cluster, _ = ray_cli_cluster
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    at = ["--address", cluster.dashboard]
    train = ["submit", "train", "--epochs", "5000", *at, "--store", str(store)]
    submit = subprocess.Popen(
        [f"{VENV_BIN}/mnist-ray", *train],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def this_job():  # the one job whose entrypoint names this test's store
            listed = json.loads(mnist_ray(["jobs", "list", "--json", *at], env, 60).stdout)
            return next((j["job_id"] for j in listed if str(store) in j["entrypoint"]), None)

        job_id = wait_until("the submitted job", this_job, timeout=120, proc=submit)

        def training():
            so_far = mnist_ray(["jobs", "logs", job_id, *at], env, 60)
            return "Epoch: 0001 cost" in so_far.stderr

        wait_until("the job's first epoch", training, timeout=240, proc=submit)
        stop = mnist_ray(["jobs", "stop", job_id, *at], env, 60)
        assert stop.returncode == 0 and stop.stdout.strip() == f"{job_id}: stopping", stop
        _, streamed = submit.communicate(timeout=120)
    finally:
        if submit.poll() is None:
            submit.kill()
    assert submit.returncode == 1, streamed[-3000:]

    raw = JobSubmissionClient(
        cluster.dashboard, headers={"Authorization": f"Bearer {cluster.token}"}
    )
    # The driver of `submit train` takes the SIGTERM itself: the run is left interrupted.
    assert "go on with: mnist-ray submit train --resume run-" in raw.get_job_logs(job_id)
    logs = mnist_ray(["jobs", "logs", job_id, *at], env, 60)
    follow = mnist_ray(["jobs", "logs", job_id, "--follow", *at], env, 60)
    assert logs.returncode == 0 and follow.returncode == 1, (logs, follow)
    for said in (streamed, logs.stderr, follow.stderr):
        assert "Epoch: 0001 cost" in said  # the log itself is all there
        assert "SIGTERM" not in said and "PC: @" not in said and "WebSocket" not in said, said
        assert said.count(STOPPED) == 1, said
    assert streamed.rstrip().endswith(f"Error: job {job_id} {STOPPED}")
    # `jobs logs` asks the job's status: stopped, said after the log's resume hint.
    said = logs.stderr.rstrip().splitlines()
    assert said[-1] == f"Job {job_id} {STOPPED}.", logs.stderr
    assert "go on with: mnist-ray submit train --resume run-" in said[-2], logs.stderr
    status = mnist_ray(["jobs", "status", job_id, *at], env, 60)
    assert status.returncode == 1 and status.stdout.startswith(f"{job_id}: STOPPED")


def test_a_failing_job_fails_the_command(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    result = mnist_ray(
        ["evaluate", "--run", "run-none", "--address", cluster.dashboard, "--store", str(tmp_path)],
        env,
    )
    assert result.returncode == 1, result
    assert "no such run" in result.stdout + result.stderr  # the job's own one line, streamed
    assert re.search(r"Error: job raysubmit_\w+ failed", result.stderr), result.stderr


def test_a_gcs_address_wants_the_token_and_takes_it_alone(ray_cli_cluster, tmp_path):
    """--address HOST:PORT (a driver on this machine, not a job): without the token, one
    line instead of Ray's 20 s of retry warnings; RAY_AUTH_TOKEN alone then connects, and
    the GPU node gets the training task."""
    cluster, gpu_node_id = ray_cli_cluster
    store = tmp_path / "store"
    args = ["submit", "train", "--epochs", "1", "--address", cluster.gcs, "--store", str(store)]
    refused = mnist_ray(args, client_env(tmp_path), 120)
    assert refused.returncode == 1, refused
    last = refused.stderr.strip().splitlines()[-1]
    assert "the cluster wants a Ray token; set RAY_AUTH_TOKEN" in last, refused.stderr
    assert "InvalidAuthToken" not in refused.stderr and "Traceback" not in refused.stderr
    assert not list(store.glob("runs/*.parquet"))

    ok = mnist_ray(args, client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"Connected to Ray at {cluster.gcs}: 2 CPUs, 1 GPUs" in ok.stderr
    (run,) = read_rows(Store(str(store)), "runs")[0]
    assert run["node_id"] == gpu_node_id and run["epochs"] == 1


# ---- stdout is one JSON document in every mode; a store means the same on every node -----------


def _json_stdout(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # all of stdout: nothing of Ray's or the job's log


def test_json_through_the_jobs_api_is_the_whole_of_stdout(ray_cli_cluster, tmp_path):
    cluster, _ = ray_cli_cluster
    store = tmp_path / "store"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    base = ["--address", cluster.dashboard, "--store", str(store), "--json"]
    train = mnist_ray(["submit", "train", "--epochs", "1", *base], env)
    row = _json_stdout(train)
    assert "Epoch: 0001 cost" in train.stderr  # the job's log streams to stderr
    (stored,) = read_rows(Store(str(store)), "runs")[0]
    assert row["run_id"] == stored["run_id"] and row["epoch_costs"] == stored["epoch_costs"]
    evaluate = mnist_ray(["evaluate", "--shards", "2", *base], env)
    row = _json_stdout(evaluate)
    assert "Runtime env is setting up" in evaluate.stderr or "Shards done" in evaluate.stderr
    assert row["run_id"] == stored["run_id"] and row["total"] == 10_000
    # what a script sees of them: mnist-ray's jobs, newest first, as one JSON list
    queued = _json_stdout(mnist_ray(["evaluate", "--shards", "1", "--no-wait", *base], env))
    assert JOB_ID.fullmatch(queued["job_id"]) and queued["address"] == cluster.dashboard
    logs = mnist_ray(["jobs", "logs", queued["job_id"], "--follow", *base[:2]], env)
    assert json.loads(logs.stdout)["shards"] == 1  # the job's result, apart from its log
    listed = _json_stdout(mnist_ray(["jobs", "list", *base[:2], "--json"], env))
    ours = [j for j in listed if j["job_id"] in (job_of(train), job_of(evaluate), queued["job_id"])]
    assert [j["command"] for j in ours] == ["evaluate", "evaluate", "submit train"]
    assert ours[0]["job_id"] == queued["job_id"]  # newest first
    assert all(j["status"] == "SUCCEEDED" and j["start_time"] for j in ours)
    assert all("mnist-ray" in j["entrypoint"] for j in listed)


def job_of(result) -> str:
    return JOB_ID.search(result.stderr).group(0)


def test_relative_store_means_the_same_on_every_node_and_json_via_gcs_and_ray_client(
    ray_cli_cluster, tmp_path
):
    """The driver works in its own folder, the nodes in theirs (the cluster's temp dir):
    a relative --store reaches the tasks as the driver's absolute path."""
    cluster, gpu_node_id = ray_cli_cluster
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)

    def run(args):
        return subprocess.run(
            [f"{VENV_BIN}/mnist-ray", *args, "--store", "rel-store", "--json"],
            env=env,
            cwd=driver_dir,
            capture_output=True,
            text=True,
            timeout=300,
        )

    train = run(["submit", "train", "--epochs", "2", "--gpus", "1", "--address", cluster.gcs])
    row = _json_stdout(train)
    store = driver_dir / "rel-store"
    assert row["weights_uri"] == str(store / "weights" / f"{row['run_id']}.safetensors")
    assert row["node_id"] == gpu_node_id  # trained on the other node, in another folder
    (stored,) = read_rows(Store(str(store)), "runs")[0]
    assert stored["run_id"] == row["run_id"]
    # the task wrote its checkpoints to the driver's store (then cleared), nowhere else
    assert not list(cluster.temp_dir.rglob("rel-store"))
    assert not (store / "checkpoints" / row["run_id"]).exists()

    # both commands, both ways of running the driver here: stdout is one JSON document
    evals = [
        _json_stdout(run(["evaluate", "--shards", "2", "--address", address]))
        for address in (cluster.client, cluster.gcs)
    ]
    assert all(e["run_id"] == row["run_id"] and e["total"] == 10_000 for e in evals)
    stored = [e["eval_id"] for e in read_rows(Store(str(store)), "evaluations")[0]]
    assert stored == [e["eval_id"] for e in evals]
    via_client = run(["submit", "train", "--epochs", "2", "--address", cluster.client])
    again = _json_stdout(via_client)
    assert again["epoch_costs"] == row["epoch_costs"]  # same seed, same costs, via ray://
    # Ray Client has no streaming generators: the epochs come through a queue, each once
    shown = [ln for ln in via_client.stderr.splitlines() if ln.startswith("Epoch: ")]
    assert shown == [f"Epoch: {i:04d} cost = {c:.9f}" for i, c in enumerate(row["epoch_costs"], 1)]


# ---- tokens, as a person meets them -----------------------------------------------------------


def test_the_readmes_token_lines_work_and_the_message_names_the_ways(ray_cli_cluster, tmp_path):
    """The README's `export ... $(ray get-auth-token)` lines, run as written where the
    head's token is in ~/.ray/auth_token; then Ray's default-file way alone."""
    from conftest import REPO

    cluster, _ = ray_cli_cluster
    env = client_env(tmp_path)
    (Path(env["HOME"]) / ".ray").mkdir(exist_ok=True)
    (Path(env["HOME"]) / ".ray" / "auth_token").write_text(cluster.token)
    readme = (REPO / "README.md").read_text().splitlines()
    lines = [ln.strip() for ln in readme if "export RAY_AUTH_TOKEN=$(ray get-auth-token)" in ln]
    assert lines
    export = lines[-1]  # the "Where the token comes from" one; the others say the same
    got = subprocess.run(
        ["bash", "-c", f"{export}\nmnist-ray jobs list --json --address {cluster.dashboard}"],
        env=env | {"PATH": f"{VENV_BIN}:{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    assert isinstance(json.loads(got.stdout), list)

    store = tmp_path / "store"
    args = ["submit", "train", "--epochs", "1", "--address", cluster.gcs, "--store", str(store)]
    (tmp_path / "other").mkdir()
    refused = mnist_ray(args, client_env(tmp_path / "other"), 120)  # no token anywhere
    assert refused.returncode == 1
    message = refused.stderr.strip().splitlines()[-1]
    for way in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE=token", "~/.ray/auth_token", "get-auth-token"):
        assert way in message, message
    default_file = mnist_ray([*args, "--json"], env | {"RAY_AUTH_MODE": "token"})
    row = _json_stdout(default_file)  # RAY_AUTH_MODE=token and the default file: enough
    assert row["epochs"] == 1


def test_a_run_stopped_through_ray_client_resumes_through_it_bit_identically(
    ray_cli_cluster, tmp_path
):
    """`ray://`: Ctrl-C leaves the run interrupted, `--resume` goes on through Ray Client
    (whose training comes through a queue, not a streaming generator) to the costs and
    weights of the same run never interrupted."""
    import os
    import signal

    cluster, _ = ray_cli_cluster
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)
    train = ["submit", "train", "--epochs", "3", "--checkpoint-every", "0", "--gpus", "0"]
    client = ["--address", cluster.client]

    def run(args, store):
        got = subprocess.run(
            [f"{VENV_BIN}/mnist-ray", *args, "--store", str(store), "--json"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        return json.loads(got.stdout)

    whole = run([*train, *client], tmp_path / "whole")
    store = tmp_path / "stopped"
    driver = subprocess.Popen(
        [f"{VENV_BIN}/mnist-ray", *train, *client, "--store", str(store)],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        seen = []
        for line in driver.stderr:  # bounded by the wait below if it never comes
            seen.append(line)
            if line.startswith("Epoch: 0002"):
                os.killpg(driver.pid, signal.SIGINT)  # a terminal's Ctrl-C
                break
        left: list[str] = []  # the rest of stderr, read aside so that the wait bounds it
        reader = threading.Thread(target=lambda: left.append(driver.stderr.read()), daemon=True)
        reader.start()
        code = driver.wait(timeout=120)
        reader.join(timeout=30)
        rest = "".join(left)
        assert code == 130, "".join(seen) + rest
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    (stopped,) = read_rows(Store(str(store)), "runs")[0]
    assert stopped["status"] == "interrupted", "".join(seen) + rest
    assert f"--resume {stopped['run_id']}" in rest

    done = run(["submit", "train", "--resume", stopped["run_id"], *client], store)
    assert done["run_id"] == stopped["run_id"] and done["status"] == "finished"
    assert done["epoch_costs"] == whole["epoch_costs"]
    ours, theirs = (
        Store(str(s)).read_weights(r) for s, r in ((store, done), (tmp_path / "whole", whole))
    )
    assert all(ours[k].tobytes() == theirs[k].tobytes() for k in theirs)
    assert [r["run_id"] for r in read_rows(Store(str(store)), "runs")[0]] == [done["run_id"]]

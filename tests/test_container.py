"""The image, really built and run: a Ray head and a GPU-declaring worker as containers on
the host network, the full 15-epoch training and an evaluation submitted from the host
through the Jobs API, the results checked in a host folder mounted at the same path.

    CONTAINER_ENGINE=docker pytest -m container tests/test_container.py

The engine is $CONTAINER_ENGINE (default `docker`), any docker-compatible command. Plain
docker/podman get `--network host`; a wrapper that sets the network itself (as this
project's build machines have) must not, so CONTAINER_HOST_NETWORK=0|1 overrides the guess.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, client_env, http_json, mnist_ray, node_ports, wait_until
from reference import SCALED_ACCURACY, TUTORIAL_COSTS

from mnist_ray.query import read_rows
from mnist_ray.store import Store

pytestmark = pytest.mark.container

ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")
IMAGE = "mnist-ray:test"
# The classic program's 15th cost and its accuracy on scaled test pixels (tests/reference.py)
FINAL_COST = f"{TUTORIAL_COSTS[-1]:.9f}"
ACCURACY = SCALED_ACCURACY


def engine(*args: str, timeout: float = 120, check: bool = True):
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args[:3])}: {result.stderr[-2000:]}")
    return result


def host_network() -> list[str]:
    setting = os.environ.get("CONTAINER_HOST_NETWORK")
    if setting is None:
        setting = "1" if Path(ENGINE).name in ("docker", "podman", "nerdctl") else "0"
    return ["--network=host"] if setting == "1" else []


@pytest.fixture(scope="module")
def image():
    if shutil.which(ENGINE) is None:
        pytest.skip(f"no container engine: {ENGINE!r} not found (set CONTAINER_ENGINE)")
    if engine("version", check=False, timeout=60).returncode != 0:
        pytest.skip(f"container engine {ENGINE!r} does not answer (`{ENGINE} version` failed)")
    engine("build", "-t", IMAGE, "-f", "docker/Dockerfile", str(REPO), timeout=2400)
    return IMAGE


def test_image_runs_the_job_on_a_container_cluster(image, mnist_data, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)  # the image runs as an unprivileged user (uid 1000)
    token = secrets.token_hex(16)
    tag = secrets.token_hex(3)
    head_flags, head_ports = node_ports(head=True)
    worker_flags, worker_ports = node_ports(head=False)
    gcs = f"127.0.0.1:{head_ports['port']}"
    dashboard = f"http://127.0.0.1:{head_ports['dashboard-port']}"
    common = [
        "run",
        "-d",
        *host_network(),
        "--shm-size=1g",
        "-e",
        "RAY_AUTH_MODE=token",
        "-e",
        f"RAY_AUTH_TOKEN={token}",
        "-v",
        f"{mnist_data}:/data:ro",
        "-v",
        f"{store}:{store}",
    ]
    ray = [
        "ray",
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=300000000",
    ]
    names = [f"mnist-ray-head-{tag}", f"mnist-ray-gpu-{tag}"]
    try:
        engine(
            *common,
            "--name",
            names[0],
            image,
            *ray,
            "--head",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=1",
            "--num-gpus=0",
            *head_flags,
        )
        wait_until("head container", lambda: http_json(f"{dashboard}/api/version", token), 180)
        engine(
            *common,
            "--name",
            names[1],
            image,
            *ray,
            f"--address={gcs}",
            "--num-cpus=1",
            "--num-gpus=1",
            *worker_flags,
        )
        agent = f"http://127.0.0.1:{worker_ports['dashboard-agent-listen-port']}"
        wait_until(
            "GPU worker container",
            lambda: urllib.request.urlopen(f"{agent}/api/local_raylet_healthz", timeout=5),
            180,
        )
        nodes = http_json(f"{dashboard}/api/v0/nodes?detail=1", token)["data"]["result"]["result"]
        (gpu_node,) = [n for n in nodes if n["resources_total"].get("GPU", 0) >= 1]

        env = client_env(tmp_path, RAY_AUTH_TOKEN=token)
        base = ["--address", dashboard, "--store", str(store)]
        train = mnist_ray(["submit", "train", "--epochs", "15", *base], env, timeout=900)
        assert train.returncode == 0, train.stderr[-3000:]
        evaluate = mnist_ray(["evaluate", "--shards", "4", *base], env, timeout=600)
        assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    except BaseException:
        for name in names:
            logs = engine("logs", "--tail", "40", name, check=False)
            print(f"--- {name}\n{logs.stdout}{logs.stderr}")
        raise
    finally:
        engine("rm", "-f", *names, check=False, timeout=120)

    (run,) = read_rows(Store(str(store)), "runs")[0]
    assert f"{run['epoch_costs'][-1]:.9f}" == FINAL_COST
    assert run["node_id"] == gpu_node["node_id"] and run["gpu_ids"] == [0]
    (row,) = read_rows(Store(str(store)), "evaluations")[0]
    assert row["run_id"] == run["run_id"]
    assert round(row["accuracy"], 4) == ACCURACY
    # written by the containers' user into the host folder, readable here
    assert (store / "weights" / f"{run['run_id']}.safetensors").stat().st_uid == 1000

"""The `ray up` configs (jobs/cluster/*.yaml), checked with Ray's own validation and for
what they promise: a CPU head, a GPU worker type that scales from 0, the project's image,
token auth on every node, and no dashboard port open to the outside.

    PYTHONPATH=. python -m pytest tests/test_cluster_launcher.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from test_manifests import IMAGE

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "jobs" / "cluster").glob("*.yaml"))
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_is_one_for_aws_and_one_for_gcp():
    assert [p.name for p in CONFIGS] == ["aws.yaml", "gcp.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_rays_own_validation_accepts_it(path):
    config = load(path)
    jsonschema.validate(config, SCHEMA)  # as written, against the schema Ray ships
    validate_config(prepare_config(config))  # as `ray up` sees it, with Ray's defaults


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cpu_head_and_a_gpu_worker_type_from_zero(path):
    config = load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    (gpu,) = [t for name, t in types.items() if t["resources"].get("GPU")]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    node = gpu["node_config"]
    if config["provider"]["type"] == "aws":
        assert node["InstanceType"].startswith(("g4dn.", "g5.", "g6.", "p3.", "p4d."))
    else:
        (accelerator,) = node["guestAccelerators"]
        assert accelerator["acceleratorCount"] == 1
        assert accelerator["acceleratorType"].startswith("nvidia-")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_projects_image_and_token_auth_on_every_node(path):
    config = load(path)
    assert config["docker"]["image"].rsplit("/", 1)[-1] == IMAGE
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    # the token reaches every node through the launcher, from the user's default file
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_dashboard_port_open_to_the_outside(path):
    config = load(path)
    (head_start,) = [c for c in config["head_start_ray_commands"] if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start  # `ray dashboard` tunnels to it
    assert "8265" not in json.dumps(config)  # no rule, option or port names it
    group = config["provider"].get("security_group")
    if config["provider"]["type"] == "aws":
        ports = {(p["FromPort"], p["ToPort"]) for p in group["IpPermissions"]}
        assert ports == {(22, 22)}  # SSH only
    assert "ray dashboard" in path.read_text() and "ray up" in path.read_text()
    assert re.search(r"mnist-ray submit train --address http://127\.0\.0\.1:8265", path.read_text())

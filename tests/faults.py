"""Faults injected into Ray's workers for the fault tests; the package has no switch for them.

    ray.init(address, runtime_env=faults.runtime_env(folder))
    (folder / "shard-1").touch()   # the next shard task to start SIGKILLs its own worker

`runtime_env(folder)` puts this folder (tests/) on the workers' PYTHONPATH and names
`arm` as Ray's `worker_process_setup_hook`, so every worker process of that driver's job
runs `arm()` once when it starts, before any task. `arm` wraps three functions the tasks
call, in the worker only; other jobs on the same cluster, and the package itself, never
see any of it. Each wrapper looks for a token file in `folder` and, when it is the one to
remove it (an unlink is atomic: of tasks racing for one token, one wins), acts:

    train-*              a training task kills its own worker (SIGKILL) as it starts,
                         before it has read or written any checkpoint
    checkpoint-<E>-*     a training task kills its own worker right after it has written
                         the checkpoint of epoch E, so the retry resumes from it
    shard-*              a shard task kills its own worker as it starts
    stall-shard-<node>   a shard task on that Ray node sleeps until the test removes the
                         node, so the node surely dies with a task on it

A SIGKILL is a real worker death, as the OOM killer would cause, that Ray has to retry.

Holds, for the kill matrix (tests/killmatrix.py), stop a process at a chosen moment so
that the test can kill something there. They reach every Python process of a command,
its Ray workers included, through a sitecustomize.py on PYTHONPATH (`sitecustomize(dir)`
writes one) and act only where $MNIST_RAY_TEST_HOLDS names a folder. A token
`hold-<point>` in it arms one point; the process that takes the token writes
`reached-<point>` (its pid) and waits until `release` appears there (at most 300 s):

    start        a training task begins (checkpoints.latest, in a Ray worker)
    epoch        halfway through the second epoch (train.Training._step, in a Ray worker)
    checkpoint   a checkpoint is written but not yet moved to its name (in a Ray worker)
    row          the finished run's row is about to be written, its weights already are
                 (Store.write_row of a "runs" row with weights, in a driver)
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FOLDER = "MNIST_RAY_TEST_FAULTS"  # the workers' environment: where the tokens are


def runtime_env(folder: Path) -> dict:
    """The runtime_env of a driver whose tasks take faults from `folder`."""
    path = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    return {
        "env_vars": {"PYTHONPATH": os.pathsep.join(p for p in path if p), FOLDER: str(folder)},
        "worker_process_setup_hook": "faults.arm",
    }


def arm() -> None:
    """Ray's worker_process_setup_hook: wrap what the tasks call. Raises if a name moved,
    so a renamed function fails the fault tests instead of silently disarming them."""
    import ray

    from mnist_ray import checkpoints, cluster

    folder = Path(os.environ[FOLDER])
    latest, save, evaluate_shard = checkpoints.latest, checkpoints.save, cluster.evaluate_shard

    def latest_or_die(store, run_id, **kwargs):  # the first thing a training task does
        _take(folder, "train-*")
        return latest(store, run_id, **kwargs)

    def save_then_die(store, run_id, ckpt):
        written = save(store, run_id, ckpt)
        _take(folder, f"checkpoint-{ckpt.epoch}-*")
        return written

    def evaluate_or_die(*args, **kwargs):  # what a shard task calls first
        stall = folder / f"stall-shard-{ray.get_runtime_context().get_node_id()}"
        if _unlink(stall):
            time.sleep(600)  # not a wait for anything: the test removes this node long before
        _take(folder, "shard-*")
        return evaluate_shard(*args, **kwargs)

    checkpoints.latest, checkpoints.save = latest_or_die, save_then_die
    cluster.evaluate_shard = evaluate_or_die


def _take(folder: Path, pattern: str) -> None:
    """SIGKILL this process if it is the one to remove a token matching `pattern`."""
    for token in sorted(folder.glob(pattern)):
        if _unlink(token):
            os.kill(os.getpid(), signal.SIGKILL)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# ---- holds ------------------------------------------------------------------------------------

HOLDS = "MNIST_RAY_TEST_HOLDS"  # the environment: the folder of the hold tokens
HOLD_LIMIT = 300.0  # a hold nobody releases ends by itself: nothing waits unbounded


def sitecustomize(folder: Path) -> Path:
    """Write folder/sitecustomize.py, which installs the holds in every Python process
    that has `folder` on its PYTHONPATH; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.append({str(TESTS)!r})\nimport faults\nfaults.install_holds()\n"
    )
    return folder


def install_holds() -> None:
    """Patch mnist_ray's modules as they are imported, when $MNIST_RAY_TEST_HOLDS is set."""
    if os.environ.get(HOLDS):
        sys.meta_path.insert(0, _PatchOnImport(Path(os.environ[HOLDS])))


def hold(folder: Path, point: str) -> None:
    """If this process takes the token of `point`: say so, then wait for the release."""
    if not _unlink(folder / f"hold-{point}"):
        return
    reached = folder / f"reached-{point}"
    tmp = folder / f".reached-{point}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    tmp.rename(reached)
    deadline = time.monotonic() + HOLD_LIMIT
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _in_worker() -> bool:
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    worker = ray._private.worker.global_worker
    return getattr(worker, "mode", None) == ray.WORKER_MODE


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the usual finder find a module of PATCHES, then patches
    the module right after it has run."""

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        patch = getattr(self, "_" + name.replace(".", "_"), None)
        if not name.startswith("mnist_ray.") or patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                spec.loader = _Patching(spec.loader, patch)
                return spec
        return None

    def _mnist_ray_checkpoints(self, module) -> None:
        latest, folder = module.latest, self.folder

        def latest_or_hold(*args, **kwargs):
            if _in_worker():
                hold(folder, "start")
            return latest(*args, **kwargs)

        module.latest = latest_or_hold

    def _mnist_ray_train(self, module) -> None:
        step, folder = module.Training._step, self.folder

        def step_or_hold(run, cost):
            if len(run.epoch_costs) == 1 and _in_worker():
                run._km_steps = getattr(run, "_km_steps", 0) + 1
                if run._km_steps == run.steps // 2:
                    hold(folder, "epoch")
            return step(run, cost)

        module.Training._step = step_or_hold

    def _mnist_ray_store(self, module) -> None:
        write_bytes, write_row, folder = (
            module.Store.write_bytes,
            module.Store.write_row,
            self.folder,
        )

        def write_bytes_or_hold(store, relpath, data):
            if not (relpath.startswith("checkpoints/") and relpath.endswith(".safetensors")):
                return write_bytes(store, relpath, data)
            if not (_in_worker() and (folder / "hold-checkpoint").exists()):
                return write_bytes(store, relpath, data)
            fs = store.fs
            store.fs = _MoveHolds(fs, folder)
            try:
                return write_bytes(store, relpath, data)
            finally:
                store.fs = fs

        def write_row_or_hold(store, table, row):
            if table == "runs" and row.get("weights_sha256") and not _in_worker():
                hold(folder, "row")
            return write_row(store, table, row)

        module.Store.write_bytes, module.Store.write_row = write_bytes_or_hold, write_row_or_hold


class _MoveHolds:
    """A filesystem whose move holds first: the file is written under its temporary name."""

    def __init__(self, fs, folder: Path):
        self._fs, self._folder = fs, folder

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dest):
        hold(self._folder, "checkpoint")
        return self._fs.move(src, dest)


class _Patching(importlib.abc.Loader):
    def __init__(self, loader, patch):
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

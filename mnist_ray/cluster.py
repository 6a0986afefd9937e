"""The job on Ray: the remote definitions with their resources, fan out, gather once.

    from mnist_ray.session import connect
    from mnist_ray.cluster import train_on_ray, evaluate_on_ray
    with connect(None):                      # an embedded local Ray, stopped on exit
        outcome = train_on_ray(cfg, images, labels, store, run_id, gpus="auto")  # TrainOutcome

Resources sit on the remote definitions: training is one task (`--cpus` CPUs, and
`num_gpus=1` when the cluster has a GPU) that streams its epochs back as it runs,
evaluation one `num_cpus=1` task per shard, spread over the nodes. Inputs go into the
object store once (`ray.put`) and every task gets references; the driver submits
everything, then gathers. The arithmetic lives in train.py and evaluate.py; nothing here
computes, and nothing here writes a row: a run's life in the store is runs.py's.
"""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import Callable, Iterator

import numpy as np
import ray

from mnist_ray import artifact, checkpoints, signals, usermodel
from mnist_ray.config import (
    CHECKPOINT_EVERY,
    RETRIES,
    TrainConfig,
    first_line,
)
from mnist_ray.errors import ClusterError
from mnist_ray.evaluate import evaluate_shard, merge, shard_bounds
from mnist_ray.outcome import Diverged, TrainOutcome, epoch_line
from mnist_ray.output import say
from mnist_ray.placement import training_request
from mnist_ray.session import bounded
from mnist_ray.store import Store
from mnist_ray.taskinfo import current_attempt, peak_rss_mib, where

__all__ = ["ClusterError", "evaluate_on_ray", "train_on_ray"]


def _gather(
    refs: list,
    what: str,
    tick: Callable[[int], None] | None = None,
    on_stop: Callable[[], None] = lambda: None,
):
    """ray.get once; until then, if given, `tick(tasks done)` every half second. Ctrl-C
    runs `on_stop()` first, then cancels the tasks so none is left running on the cluster.
    Through Ray Client, a Ctrl-C held during a call is raised here, between calls."""
    try:
        while (done := len(ray.wait(refs, num_returns=len(refs), timeout=0.5)[0])) < len(refs):
            signals.raise_held()
            if tick is not None:
                tick(done)
        return ray.get(refs)
    except KeyboardInterrupt:
        on_stop()
        _cancel(refs, refs)
        raise
    except ray.exceptions.RayError as exc:
        raise _failure(what, exc) from None


def _cancel(tasks: list, done: list, timeout: float = 30) -> None:
    """Cancel tasks (refs or streaming generators) and wait until Ray says they ended, so
    that none is still writing when the caller tidies up after it."""

    def cancel() -> None:
        for task in tasks:
            ray.cancel(task, force=True, recursive=True)
        ray.wait(done, num_returns=len(done), timeout=timeout)

    bounded(cancel, timeout + 5)


# Deaths Ray retries (max_retries); anything the task itself raised is never retried.
RETRIED = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OutOfMemoryError,
)


def _failure(what: str, exc: BaseException) -> ClusterError:
    """One line: retries are named only when Ray retried; an error the task raised (a bad
    file, a bug) is its cause, once."""
    if isinstance(exc, RETRIED):
        return ClusterError(f"{what} failed after {RETRIES} retries: {first_line(exc)}")
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, Diverged):
            return ClusterError(f"{what} {cause}; lower --lr, or another --optimizer")
        return ClusterError(f"{what} failed: {type(cause).__name__}: {first_line(cause)}")
    return ClusterError(f"{what} failed: {first_line(exc)}")


# ---- training ---------------------------------------------------------------------------------


def training_stream(
    cfg: dict,
    images: np.ndarray,
    labels: np.ndarray,
    store: str,
    run_id: str,
    use_gpu: bool,
    checkpoint_every: float = CHECKPOINT_EVERY,
    threads: int = 1,
) -> Iterator[dict]:
    """The training task: a plain generator, run by Ray as a streaming generator task.

    Yields {"epoch", "cost", "seconds", "lr", "val_cost", "val_accuracy"} (a train.Epoch's
    fields) as each epoch completes, then {"outcome": ...}.
    Checkpoints when `checkpoint_every` seconds have passed since the last (0: every epoch
    but the last). An attempt (a retry, a resumed run) starts from the newest checkpoint
    and first yields again the epochs it restored: Ray hands the caller a retry's yields by
    position, so every attempt yields epoch i at position i. `threads`: torch's threads,
    as many as the task's CPUs (the CPU costs depend on it; the run row records it)."""
    import torch

    from mnist_ray.model import weight_shapes
    from mnist_ray.train import Training, pick_device

    attempts = current_attempt()  # here, in the task's own thread: Ray keeps it per thread
    config = TrainConfig(**cfg)
    target = Store(store)
    shapes = weight_shapes(config.model, config.model_kwargs())
    resume = checkpoints.latest(target, run_id, shapes=shapes)  # when Ray retried the task
    device = pick_device(use_gpu)
    run = Training(config, images, labels, device, resume=resume, threads=threads)
    moving = config.lr_schedule != "constant" or config.warmup_epochs
    for i, cost in enumerate(run.epoch_costs):  # restored, not trained again
        yield {
            "epoch": i + 1, "cost": cost, "seconds": None, "lr": run.lrs[i] if moving else None,
            "val_cost": run.val_costs[i] if run.val_costs else None,
            "val_accuracy": run.val_accuracies[i] if run.val_costs else None,
        }  # fmt: skip
    saved_at = time.monotonic()
    for epoch in run:
        if epoch.epoch < config.epochs and time.monotonic() - saved_at >= checkpoint_every:
            checkpoints.save(target, run_id, run.checkpoint())
            saved_at = time.monotonic()
        yield dataclasses.asdict(epoch)
    result = run.result()
    onnx, not_exported = artifact.exported(config.model, result.weights, config.model_kwargs())
    on_gpu = result.device.startswith("cuda")
    yield {
        "outcome": TrainOutcome(
            weights=result.weights,
            onnx=onnx,  # what the shards score with
            export_failure=not_exported,
            epoch_costs=result.epoch_costs,
            train_seconds=result.seconds,
            device=result.device,
            cuda_graph=result.cuda_graph,
            threads=None if device.type == "cuda" else result.threads,
            attempts=attempts,
            resumed_from_epoch=resume.epoch if resume else 0,
            torch_version=str(torch.__version__),  # a str subclass: unpickling imports torch
            peak_rss_mib=peak_rss_mib(),
            gpu_peak_mib=torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
            lrs=result.lrs,
            val_costs=result.val_costs,
            val_accuracies=result.val_accuracies,
            best_epoch=result.best_epoch,
            stopped_early=result.stopped_early,
            **where(),
        )
    }


train_task = ray.remote(num_cpus=1, max_retries=RETRIES)(training_stream)


def train_on_ray(
    cfg: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    store: Store,
    run_id: str,
    *,
    gpus: str = "auto",
    log: Callable[[str], None] = say,
    checkpoint_every: float = CHECKPOINT_EVERY,
    cpus: int = 1,
    on_epoch: Callable[[dict], None] = lambda item: None,
    on_stop: Callable[[], None] = lambda: None,
) -> TrainOutcome:
    """Run the training task, print each epoch as it streams in; return its outcome.
    `cpus`: the CPUs the task asks Ray for, and torch's threads in it. `on_epoch(item)`
    sees each epoch printed; `on_stop()` runs at Ctrl-C before the task is cancelled."""
    num_gpus = training_request(gpus, cpus, log)  # refused now if no node can take it
    args = (cfg.to_dict(), ray.put(images), ray.put(labels), store.location, run_id)
    args += (num_gpus > 0, checkpoint_every, cpus)
    options = dict(num_cpus=cpus, num_gpus=num_gpus, name=f"train {run_id}")
    options |= usermodel.task_options(cfg.model)  # a user's model: its code, shipped

    shown = [0]

    def show(item: dict) -> None:
        # Once each: a retried attempt yields again the epochs it restored (the stream
        # drops them by position; the queue of a ray:// run hands them on).
        if item["epoch"] <= shown[0]:
            return
        shown[0] = item["epoch"]
        on_epoch(item)  # before the line: an epoch the user saw is in the row Ctrl-C leaves
        log(epoch_line(types.SimpleNamespace(**item)))

    if ray.util.client.ray.is_connected():  # ray://: Ray Client has no streaming generators
        return _train_through_a_queue(args, options, show, on_stop)
    stream = train_task.options(num_returns="streaming", **options).remote(*args)
    outcome = None
    try:
        for ref in stream:
            item = ray.get(ref)
            if "outcome" in item:
                outcome = item["outcome"]
            else:
                show(item)
    except KeyboardInterrupt:
        on_stop()
        _cancel([stream], [stream.completed()])
        raise
    except ray.exceptions.RayError as exc:
        raise _failure("training", exc) from None
    return outcome


def _train_into(progress, *args) -> TrainOutcome:
    """The training task for a Ray Client driver: the same generator, its epochs put on a
    queue (an actor) as they come, its outcome returned."""
    for item in training_stream(*args):
        if "outcome" in item:
            return item["outcome"]
        progress.put(item)
    raise RuntimeError("the training stream ended without an outcome")


train_into_task = ray.remote(num_cpus=1, max_retries=RETRIES)(_train_into)


def _train_through_a_queue(
    args: tuple, options: dict, show: Callable, on_stop: Callable
) -> TrainOutcome:
    from ray.util.queue import Queue

    progress = Queue(actor_options={"num_cpus": 0})  # placed anywhere, holds no CPU
    ref = train_into_task.options(**options).remote(progress, *args)

    def drain() -> None:
        for item in progress.get_nowait_batch(progress.qsize()):
            show(item)  # once each epoch, though a retried attempt re-sends those it restored

    try:
        (outcome,) = _gather([ref], "training", tick=lambda _: drain(), on_stop=on_stop)
        drain()
        return outcome
    finally:
        bounded(lambda: ray.kill(progress.actor), 30)


def _shard_task(
    weights, images, labels, start: int, stop: int, *, sample: int, model: str,
    onnx: bytes | None, model_args: dict | None = None,
) -> dict:  # fmt: skip
    part = evaluate_shard(
        weights, images, labels, start, stop,
        sample=sample, model=model, onnx=onnx, model_args=model_args,
    )  # fmt: skip
    part["node_id"] = ray.get_runtime_context().get_node_id()
    part["peak_rss_mib"] = peak_rss_mib()
    return part


shard_task = ray.remote(num_cpus=1, max_retries=RETRIES)(_shard_task)


def evaluate_on_ray(
    weights: dict[str, np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    shards: int,
    sample: int,
    *,
    log: Callable[[str], None] = say,
    model: str = "softmax",
    onnx: bytes | None = None,
    model_args: dict | None = None,
) -> dict:
    """One CPU task per contiguous shard, each running `model` (a registry name, or a
    user's spec made with `model_args`, whose code the tasks get in their runtime_env)
    with `weights`, or the
    run's exported model `onnx` instead; the merged counts and the nodes that ran them."""
    w, x, y = ray.put(weights), ray.put(images), ray.put(labels)  # once, shared by all shards
    o = ray.put(onnx)
    # A user's model: its code; a built-in one, or an exported one: nothing.
    shipped = usermodel.task_options(model) if onnx is None else {}
    # SPREAD: Ray's default prefers the node holding the arguments (the test set, put here),
    # which queues every shard on the driver's node while the others idle.
    spread = dict(scheduling_strategy="SPREAD", **shipped)
    refs = [
        shard_task.options(name=f"shard {start}:{stop}", **spread).remote(
            w, x, y, start, stop, sample=sample, model=model, onnx=o, model_args=model_args
        )
        for start, stop in shard_bounds(len(labels), shards)
    ]
    shown = [0]

    def progress(done: int) -> None:  # a line when the count moved, at most twice a second
        if done > shown[0]:
            log(f"Shards done: {done}/{shards}")
            shown[0] = done

    parts = _gather(refs, "evaluation", tick=progress)
    progress(shards)  # the last line says N/N, whenever the last shard finished
    merged = merge(parts)
    merged["node_ids"] = sorted({p["node_id"] for p in parts})
    merged["shard_peak_rss_mib"] = max(p["peak_rss_mib"] for p in parts)
    return merged

"""Remote submission through Ray's Jobs API: the same mnist-ray command, run on the cluster.

    mnist-ray submit train --address http://127.0.0.1:8265 --store s3://bucket/mnist
    mnist-ray evaluate --shards 4 --address http://127.0.0.1:8265 --store /shared/store --no-wait
    mnist-ray jobs status raysubmit_XYZ --address http://127.0.0.1:8265
    mnist-ray jobs logs raysubmit_XYZ --follow
    mnist-ray jobs stop raysubmit_XYZ
    mnist-ray jobs list --json                 # mnist-ray's jobs on the cluster, newest first

The job's entrypoint is the command the user typed, less --address/--wait/--no-wait, with
the store spelled out; Ray runs it as the job's driver on the head, where it connects to
its own cluster. The store must therefore be shared storage: a URI or a path every node
sees. A token-protected cluster (RAY_AUTH_MODE=token on its nodes) wants the token the
way Ray's own clients take it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
with RAY_AUTH_MODE=token; RAY_AUTH_TOKEN alone is enough here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from mnist_ray import usermodel
from mnist_ray.config import ConfigError, first_line
from mnist_ray.errors import ClusterError, token_error
from mnist_ray.output import say
from mnist_ray.streams import ADDRESS_VAR, MARKER, NONCE_VAR, LogSplitter, new_nonce
from mnist_ray.ui import emit_json, friendly

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SETTLE_SECONDS = 30  # after the log stream ends, how long to wait for a terminal status
# How a job that a stop request ended reads (Ray's driver says it with a stack dump).
STOPPED = "was stopped on request (`mnist-ray jobs stop` or `ray job stop`)"


def is_remote(address: str | None) -> bool:
    return bool(address) and address.startswith(("http://", "https://"))


# ---- the entrypoint ---------------------------------------------------------------------------


def command_argv(ctx) -> list[str]:
    """The running command as words, rebuilt from what the parser saw (a typer.Context),
    not from sys.argv, which a test runner or `python -m` makes unreliable: only options
    given on the command line or through their environment variable; the job keeps the
    cluster's defaults for the rest."""
    words = ctx.command_path.split()[1:]  # drop the program name: "submit train"
    for p in ctx.command.params:
        if p.name in ("address", "wait", "store") or p.param_type_name != "option":
            continue
        if ctx.get_parameter_source(p.name).name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params[p.name]
        if p.multiple:  # --model-arg width=64 --model-arg depth=2: each as given
            words += [w for item in value or () for w in (p.opts[0], str(item))]
        elif p.is_flag and not p.secondary_opts:
            words += [p.opts[0]] if value else []
        elif p.is_flag:
            words.append(p.opts[0] if value else p.secondary_opts[0])
        elif value is not None:
            words += [p.opts[0], str(getattr(value, "value", value))]
    return words


def entrypoint(argv: list[str], store: str) -> str:
    """`mnist-ray <argv>` for the cluster, the store explicit (it may have come from
    $MNIST_RAY_STORE, which the job would not see). `command_argv` already left out
    what only the client uses (--address, --wait/--no-wait, --store)."""
    return shlex.join(["mnist-ray", *argv, "--store", store])


def check_shared_store(store: str) -> None:
    """A relative folder would be resolved on the head, in the job's scratch directory;
    credentials in a URI would be shown to anyone who can list the cluster's jobs."""
    if "://" in store:
        if urlsplit(store).password is not None:
            raise ClusterError(
                "the URI holds a secret, which the job's entrypoint would show to "
                "anyone who can list jobs; give the cluster its credentials through its "
                "environment (AWS_ACCESS_KEY_ID, ... or an instance role) instead",
                about="store",
            )
        return
    if os.path.isabs(os.path.expanduser(store)):
        return
    raise ClusterError(
        "with a remote --address the store must be shared storage, "
        "a URI (s3://bucket/prefix) or an absolute path every Ray node sees, "
        "not a folder relative to this machine",
        about="store",
        value=store,
    )


def absolute_store(store: str, address: str | None) -> str:
    """With a cluster, tasks run in other working directories, maybe on other machines: a
    relative folder is made absolute here, on the driver, so it names the same place for
    every task (a folder every node mounts at that path)."""
    if address is None or "://" in store:
        return store
    return os.path.abspath(os.path.expanduser(store))


# ---- the client -------------------------------------------------------------------------------


def _headers() -> dict[str, str] | None:
    """RAY_AUTH_TOKEN alone is enough: Ray's client only sends it when RAY_AUTH_MODE=token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if token and mode in ("", "token"):
        return {"Authorization": f"Bearer {token}"}
    return None


def _auth_error(address: str, exc: BaseException) -> Exception:
    return token_error(address, "Authentication required" in str(exc) or "401" in str(exc))


def client(address: str):
    """A JobSubmissionClient, or one line saying why there is none."""
    import ray

    from mnist_ray.session import check_ray_version

    check_ray_version(ray.__version__)  # before importing what an older Ray lacks
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # The SDK logs `WebSocket closed for job ...` at INFO each time a log stream ends, through
    # its own logger (set to INFO when imported, so this comes after the import); its
    # warnings still show.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(address, headers=_headers())
    except AuthenticationError as exc:
        raise _auth_error(address, exc) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"no Ray Jobs API answers there ({first_line(exc)}); "
            "is the head running and its dashboard port right (default 8265)?",
            about="address",
            value=address,
        ) from None


def _call(address: str, what: str, fn, *args):
    """One Jobs API request; Ray's errors become one line."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as exc:
        raise _auth_error(address, exc) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"{what}: {first_line(exc)}") from None


def ship_model(spec: str, folder: Path) -> tuple[str, dict]:
    """A user's model goes with the job, never through a shared filesystem: a file is
    copied into `folder`, the job's working_dir (where its entrypoint runs), and the spec
    names it there (`net.py:Net`), so a path relative to this machine's folder works; a
    package.module's package goes in the job's py_modules. (spec, the runtime_env part)."""
    if not usermodel.is_user(spec):
        return spec, {}
    try:  # the command checked it whole (with its --model-arg); here: that it still reads
        usermodel.load(spec)
    except usermodel.ModelError as exc:
        raise ConfigError("model", f"{spec}: {exc.message}") from None
    return usermodel.job_files(spec, folder)


def evaluated_package(store: str, run: str | None) -> dict:
    """`evaluate` needs no model file (the run row holds its text), only a package model's
    package: py_modules for it when this machine reads the store and imports the package;
    else nothing (the job then says what it lacks)."""
    from mnist_ray.query import find_run
    from mnist_ray.store import Store, StoreError

    try:
        spec = find_run(Store(store), run)["model"]
        if usermodel.is_user(spec) and usermodel.parse(spec)[0] == "package":
            return usermodel.job_files(spec, Path())[1]
    except (StoreError, usermodel.ModelError):
        pass
    return {}


# ---- submit, follow, report -------------------------------------------------------------------


def submit(
    address: str, entry: str, kind: str, nonce: str | None = None, shipped: dict | None = None
) -> tuple[object, str]:
    """Submit the entrypoint; `shipped`: more of the job's runtime_env (a user's model)."""
    c = client(address)
    # the job frames its result lines with the nonce, so they come back apart from its log
    shipped = dict(shipped or {})
    env_vars = {ADDRESS_VAR: address} | ({NONCE_VAR: nonce} if nonce else {})
    runtime_env = shipped | {"env_vars": shipped.pop("env_vars", {}) | env_vars}
    job_id = _call(
        address,
        "submitting the job",
        lambda: c.submit_job(
            entrypoint=entry,
            metadata={"app": "mnist-ray", "command": kind},
            runtime_env=runtime_env or None,
        ),
    )
    return c, job_id


def follow(c, job_id: str, write: Callable[[str], None]) -> None:
    """Copy the job's output as it comes, until the job ends."""

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def final_status(c, address: str, job_id: str, settle: float = SETTLE_SECONDS):
    """The job's status once terminal (bounded wait: logs can end a moment before)."""
    deadline = time.monotonic() + settle
    while True:
        info = _call(address, f"job {job_id}", c.get_job_info, job_id)
        if str(info.status) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def outcome(
    info, job_id: str, log: Callable[[str], None], sigterm: bool = False, said: str = ""
) -> int:
    """The exit code for how the job ended, and one line unless it succeeded. `sigterm`:
    its log held Ray's SIGTERM stack dump, which LogSplitter left out; `said`: the last
    error line the log held, for when Ray's message carries none."""
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        log(f"Error: job {job_id} {STOPPED}")
        return 1
    why = f": {job_failure(info.message or '', said)}" if info.message or said else ""
    got = " (its driver got SIGTERM)" if sigterm else ""
    verb = "failed" if status == "FAILED" else f"is {status}"
    log(f"Error: job {job_id} {verb}{why}{got}")
    return 1


# Ray's message for a failed entrypoint: this header, then the log's tail (maybe nothing).
LOGS_HEADER = "last available logs"


def job_failure(message: str, said: str = "") -> str:
    """Why a job failed, in one line: Ray's first line, then the job's own last error (the
    `Error: ...` our driver printed, else its last line) from the log's tail in Ray's
    message, else `said` (the last error line of the log we followed). Never Ray's header
    alone with nothing after it."""
    head, header, tail = message.partition(LOGS_HEADER)
    lines = [MARKER.sub("", line).strip() for line in tail.splitlines()[1:]]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("Error:")]
    first = first_line(Exception(head)).rstrip(" ,:") if header else first_line(Exception(message))
    last = (errors or lines or [said])[-1].removeprefix("Error:").strip()
    if last:
        return f"{first}: {last}" if message.strip() else last
    return f"{first} (its log is empty)" if header else first


def submit_cli(
    address: str,
    store: str,
    argv: list[str],
    wait: bool = True,
    log: Callable[[str], None] = say,
) -> int:
    """What `--address http://...` does for `submit train` and `evaluate`; the exit code."""
    check_shared_store(store)
    kind = " ".join(a for a in argv[:2] if not a.startswith("-"))
    nonce = new_nonce()
    with tempfile.TemporaryDirectory(prefix="mnist-ray-job-") as folder:
        argv, shipped = list(argv), {}  # a user's model, which submit uploads with the job
        if "--model" in argv[:-1]:
            at = argv.index("--model") + 1
            argv[at], shipped = ship_model(argv[at], Path(folder))
        elif argv[:1] == ["evaluate"]:
            run = argv[argv.index("--run") + 1] if "--run" in argv[:-1] else None
            shipped = evaluated_package(store, run)
        entry = entrypoint(argv, store)
        c, job_id = submit(address, entry, kind, nonce, shipped)
    log(f"Submitted job {job_id} to {address}: {entry}")
    if os.environ.get("MNIST_RAY_DATA") and "--data-dir" not in argv:
        log(
            "Note: this machine's MNIST_RAY_DATA does not travel; the job reads the "
            "cluster's (its nodes' MNIST_RAY_DATA, else their cache): pass --data-dir "
            "PATH to name a folder on the cluster"
        )
    if not wait:  # the job id is the result; with --json, as one JSON document
        if "--json" in argv:
            emit_json({"job_id": job_id, "address": address})
        else:
            print(job_id)
        log(f"Follow it with: mnist-ray jobs logs {job_id} --follow --address {address}")
        return 0
    split = LogSplitter(sys.stdout, sys.stderr, nonce)  # the log to stderr, the result to stdout
    try:
        follow(c, job_id, split.feed)
    except KeyboardInterrupt:
        split.close()
        stop = shlex.join(["mnist-ray", "jobs", "stop", job_id, "--address", address])
        log(f"Stopped following; job {job_id} keeps running (stop it: {stop}).")
        return 130
    except Exception as exc:  # the log stream broke: the status below still says how it ended
        log(f"Log stream of job {job_id} ended early ({first_line(exc)}).")
    split.close()
    info = final_status(c, address, job_id)
    return outcome(info, job_id, log, split.sigterm, split.last_error)


# ---- mnist-ray jobs status|logs|stop ----------------------------------------------------------

app = typer.Typer(
    no_args_is_help=True,
    help="Jobs on a Ray cluster: `mnist-ray jobs status JOB_ID --address http://HOST:8265`.",
)

JobId = Annotated[
    str, typer.Argument(metavar="JOB_ID", help="The job's submission id (raysubmit_...).")
]
Address = Annotated[
    str,
    typer.Option(
        "--address",
        envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],  # as `ray job` reads them
        help="The cluster's Jobs API, http://HOST:8265 (the head's dashboard port).",
    ),
]


def _remote(address: str) -> str:
    if not is_remote(address):
        raise typer.BadParameter(
            f"{address} is not a Jobs API address; give http://HOST:8265", param_hint="'--address'"
        )
    return address


@app.command()
@friendly
def status(job_id: JobId, address: Address = "http://127.0.0.1:8265") -> None:
    """Print a job's status (and why it ended, if it did); exit 0 unless it failed or stopped.

    Example: mnist-ray jobs status raysubmit_XYZ --address http://127.0.0.1:8265
    """
    c = client(_remote(address))
    info = _call(address, f"job {job_id}", c.get_job_info, job_id)
    line = f"{job_id}: {info.status}"
    if info.message:
        line += f" ({first_line(Exception(info.message))})"
    print(line)
    if str(info.status) in ("FAILED", "STOPPED"):
        raise typer.Exit(1)


@app.command()
@friendly
def logs(
    job_id: JobId,
    address: Address = "http://127.0.0.1:8265",
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
) -> None:
    """Print a job's output so far, or follow it to its end.

    Example: mnist-ray jobs logs raysubmit_XYZ --follow
    """
    c = client(_remote(address))
    split = LogSplitter(sys.stdout, sys.stderr)  # as when submitting: the result to stdout
    if not follow_:
        split.feed(_call(address, f"job {job_id}", c.get_job_logs, job_id))
        split.close()
        # Whether it was stopped is the job's status, not its log's text: a stopped
        # `submit train` ends its log with how to resume, not with Ray's stack dump.
        info = _call(address, f"job {job_id}", c.get_job_info, job_id)
        if str(info.status) == "STOPPED":
            say(f"Job {job_id} {STOPPED}.")
        elif split.sigterm:  # the log ended in Ray's stack dump, which LogSplitter left out
            say(f"Job {job_id} got SIGTERM.")
        return
    # a missing job: one line here, not a websocket error below
    _call(address, f"job {job_id}", c.get_job_info, job_id)
    try:
        follow(c, job_id, split.feed)
        split.close()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        raise ClusterError(f"job {job_id}: log stream ended early ({first_line(exc)})") from None
    info = final_status(c, address, job_id)
    raise typer.Exit(outcome(info, job_id, say, split.sigterm, split.last_error))


@app.command()
@friendly
def stop(job_id: JobId, address: Address = "http://127.0.0.1:8265") -> None:
    """Ask Ray to stop a job (its tasks are cancelled; what it already stored stays).

    Example: mnist-ray jobs stop raysubmit_XYZ
    """
    c = client(_remote(address))
    stopped = _call(address, f"job {job_id}", c.stop_job, job_id)
    print(f"{job_id}: {'stopping' if stopped else 'not running, nothing to stop'}")


@app.command("list")
@friendly
def list_jobs(
    address: Address = "http://127.0.0.1:8265",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list to stdout.")] = False,
) -> None:
    """List the mnist-ray jobs on the cluster (those `submit train` and `evaluate` submitted),
    newest first.

    Example: mnist-ray jobs list --address http://127.0.0.1:8265 --json
    """
    c = client(_remote(address))
    found = _call(address, "listing jobs", c.list_jobs)
    rows = [job_row(j) for j in found if (j.metadata or {}).get("app") == "mnist-ray"]
    rows.sort(key=lambda r: (r["start_time"] or "", r["job_id"]), reverse=True)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        started = (r["start_time"] or "-")[:19].replace("T", " ")
        print(f"{r['job_id']}  {r['status']:<9}  {started}  {r['command']}")


def job_row(job) -> dict:
    """What a script wants of a job: ids, state, times (UTC, ISO 8601), what it runs."""

    def iso(ms):
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None

    return {
        "job_id": job.submission_id,
        "status": str(job.status),
        "command": (job.metadata or {}).get("command", ""),
        "entrypoint": job.entrypoint,
        "start_time": iso(job.start_time),
        "end_time": iso(job.end_time),
        "message": job.message,
    }

"""What the commands share for talking to a person: the two consoles, one failure idiom.

    from mnist_ray.ui import err, friendly
    err.print("progress goes to stderr")     # results go to stdout (`out`, or print)

    @app.command()
    @friendly("evaluate")                    # the command as a user types it
    def evaluate(...): ...

Used by cli.py and jobs.py alike, so neither imports the other for it; the options several
commands take (`StoreOpt`, `AddressOpt`, ...) are defined here once for the same reason.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from mnist_ray.config import (
    DEFAULT_MODEL,
    KEEPS,
    MODEL_DEFAULTS,
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    check_id,
    name_values,
)
from mnist_ray.data import DataError
from mnist_ray.errors import ClusterError, RefusedError
from mnist_ray.output import as_json
from mnist_ray.store import StoreError
from mnist_ray.streams import user_address

PIPE_WIDTH = 160  # stdout that is no terminal, without COLUMNS: wide lines, not rich's 80


class _Stdout(Console):
    """stdout, measured at each print: COLUMNS when set, else the terminal's width, else
    PIPE_WIDTH, so `results | cat` gets whole rows and `COLUMNS=100 ... | cat` is obeyed."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or os.environ.get("COLUMNS", "").isdigit():
            return size
        return ConsoleDimensions(PIPE_WIDTH, size.height)


class _Stderr(Console):
    """stderr, where a line Ctrl-C interrupts is written at most once: rich empties its
    buffer after the write returns, so a KeyboardInterrupt raised between the two (the
    line already out) left it there, and the next print (`interrupted: ...`) wrote it again."""

    def _write_buffer(self) -> None:
        try:
            super()._write_buffer()
        except BaseException:
            with self._lock:
                del self._buffer[:]
            raise


# Neither console reads markup or emoji codes in what it prints: a model's source, a cell
# or a job's log line holds `[bold]`, `self.layers[i]` or `:x:` as data, printed as it is.
# Styling is given as rich Text (`fail`), never as tags inside a string.
PLAIN = dict(highlight=False, soft_wrap=True, markup=False, emoji=False)
out = _Stdout(**PLAIN)
err = _Stderr(stderr=True, **PLAIN)


def emit(pieces: list) -> None:
    """What a person reads, to stdout: lines, tables, the terminal picture."""
    for piece in pieces:
        out.print(piece)


def emit_json(document) -> None:
    """One strict JSON document on stdout, as plain text: never through rich."""
    print(as_json(document), flush=True)


def styled(label: str, style: str, rest: str) -> Text:
    """`label` in `style`, then `rest` as it is (brackets and all)."""
    return Text.assemble((label, style), " ", rest)


# What Ctrl-C leaves behind, for the commands that run Ray tasks; others say "interrupted".
INTERRUPTED = {
    "submit train": "the Ray tasks were cancelled and nothing was written.",
    "evaluate": "the Ray tasks were cancelled and nothing was written.",
    "sweep": "every trial was stopped; finished trials keep their runs.",
}


def fail(message: str, code: int = 1) -> None:
    err.print(styled("Error:", "bold red", message))
    raise typer.Exit(code)


def pasteable(ctx, *words: str, store: str | None = None) -> str:
    """`mnist-ray WORDS` as a hint to paste: with `store`, else the --store this command
    was given on its command line, and its --address (through the Jobs API, the address
    it was submitted to), so it acts on the same store and cluster."""
    words = ["mnist-ray", *words]
    params = ctx.params if ctx is not None else {}
    if store is None and params.get("store") is not None:
        store = params["store"] if ctx.get_parameter_source("store").name == "COMMANDLINE" else None
    if store is not None:
        words += ["--store", str(store)]
    typed = (
        params.get("address")
        if params.get("address") is not None
        and (ctx.get_parameter_source("address").name == "COMMANDLINE")
        else None
    )  # not from the environment: a job's driver has RAY_ADDRESS set by Ray
    if (address := user_address(typed)) is not None:
        words += ["--address", address]
    return shlex.join(words)


def spelled(param: str, command) -> str:
    """A parameter's name as `command` (a CLI function) spells it: `batch_size` is
    `--batch-size`, `eval_id` is `EVAL_ID` for `show` and `--eval` for `report`. A name
    already spelled as an option (`--samples`) or an argument (`EVAL_ID`) is kept."""
    if param.startswith("-") or param.isupper():
        return param
    from typer.models import ArgumentInfo, OptionInfo
    from typer.utils import get_params_from_function

    meta = get_params_from_function(command).get(param)
    info = meta.default if meta else None
    if isinstance(info, ArgumentInfo):
        return param.upper()  # as the messages name arguments: EVAL_ID, RUNS
    if isinstance(info, OptionInfo):
        named = [d for d in info.param_decls or () if d.startswith("--")]
        if named:
            return named[0]
    return "--" + param.replace("_", "-")  # typer's own spelling of an unnamed option


def friendly(command: str | None = None):
    """One idiom for failures: a user's mistake or a runtime failure is one line, no traceback.
    `command` is the command as a user types it (`submit train`): what Ctrl-C says after it."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ConfigError as exc:
                hint = f"'{spelled(exc.param, fn)}'"
                raise typer.BadParameter(exc.message, param_hint=hint) from None
            except RefusedError as exc:  # bad input seen against the store: as a bad option
                fail(exc.line(spelled(exc.about, fn)) if exc.about else str(exc), 2)
            except (StoreError, ClusterError) as exc:  # `store` is written `--store PATH: ...`
                fail(exc.line(spelled(exc.about, fn)) if exc.about else str(exc))
            except DataError as exc:
                fail(str(exc))
            except KeyboardInterrupt:  # not an error: the user asked to stop
                left = INTERRUPTED.get(command)
                err.print(f"interrupted: {left}" if left else "interrupted")
                raise typer.Exit(130) from None

        return wrapper

    if callable(command):  # @friendly without a command: Ctrl-C says just "interrupted"
        fn, command = command, None
        return decorate(fn)
    return decorate


# ---- the options several commands take --------------------------------------------------------


class Dataset(StrEnum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


class Gpus(StrEnum):
    auto = "auto"
    none = "0"
    one = "1"


def positive_finite(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} must be a finite number above 0")
    return value


def valid_id(value: str | None) -> str | None:
    if value is not None:
        try:
            check_id(value)
        except ConfigError as exc:
            raise typer.BadParameter(exc.message) from None
    return value


StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="MNIST_RAY_STORE",
        help="Result store: a folder or s3:// gs:// file:// URI.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding MNIST/raw/ (default: $MNIST_RAY_DATA, else "
        "${XDG_CACHE_HOME:-~/.cache}/mnist-ray).",
        file_okay=False,
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster: auto, HOST:PORT, ray://HOST:10001, or http://HOST:8265 for the "
        "Jobs API. Default: an embedded local Ray.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]
WaitOpt = Annotated[bool, typer.Option(help="With an http:// address: follow the job to its end.")]
CheckpointEveryOpt = Annotated[
    float,
    typer.Option(
        min=0,
        max=86_400,
        help="Seconds between checkpoints a retried worker resumes from; 0: every epoch.",
    ),
]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV (a header line, then rows).")]
# The choices are config's table (model.list_models() holds the same names), so that the
# command line can offer them without importing torch; the callback hands on the plain str.
ModelName = StrEnum("ModelName", {n: n for n in MODEL_DEFAULTS})
Optimizer = StrEnum("Optimizer", {n: n for n in OPTIMIZERS})
TUTORIAL_MODEL = ModelName(DEFAULT_MODEL)


def model_spec(value: str) -> str:
    """A built-in name, or a user's FILE.py:NAME / package.module:NAME (TrainConfig.validate
    loads and checks that one); any other word is refused as a choice is."""
    value = str(getattr(value, "value", value))
    if value in MODEL_DEFAULTS or ":" in value:
        return value
    names = ", ".join(repr(n) for n in MODEL_DEFAULTS)
    close = difflib.get_close_matches(value, list(MODEL_DEFAULTS), n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    raise typer.BadParameter(
        f"{value!r} is not one of {names}, nor your own model as FILE.py:NAME or "
        f"package.module:NAME{guess}"
    )


ModelOpt = Annotated[
    str,
    typer.Option(
        callback=model_spec,
        metavar="NAME|FILE.py:NAME|MODULE:NAME",
        help="Which model: a name (`mnist-ray models` lists them), or your own nn.Module "
        "as FILE.py:NAME or package.module:NAME (docs/models.md).",
    ),
]
OptimizerOpt = Annotated[
    Optimizer | None,
    typer.Option(
        callback=lambda value: value and value.value,
        help="Optimizer (default: the model's lab's, sgd for softmax, adam for the others).",
        show_default=False,
    ),
]
LrOpt = Annotated[
    float | None,
    typer.Option(
        callback=lambda value: value if value is None else positive_finite(value),
        help="Learning rate (default: the model's lab rate, 0.1 for softmax).",
        show_default=False,
    ),
]
LrsOpt = Annotated[
    str,
    typer.Option(
        "--lr",
        help="Learning rates: a list 0.01,0.1,0.5 or a range 0.001..1 (default: the model's "
        "lab rate, 0.1 for softmax).",
        show_default=False,
    ),
]


def _pairs(param: str):
    """A NAME=VALUE option's check: each pair parsed now (the list is kept as given, and
    TrainConfig gets it as one JSON object: config.name_values)."""

    def check(values: list[str] | None) -> list[str]:
        try:
            name_values(param, list(values or ()))
        except ConfigError as exc:
            raise typer.BadParameter(exc.message) from None
        return list(values or ())

    return check


Schedule = StrEnum("Schedule", {n: n for n in SCHEDULES})
Keep = StrEnum("Keep", {n: n for n in KEEPS})
ModelArgsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model-arg",
        callback=_pairs("model_args"),
        metavar="NAME=VALUE",
        help="Your model's constructor argument, VALUE a JSON literal (width=64, "
        "kind='\"wide\"'); repeat for more.",
        show_default=False,
    ),
]
WeightDecayOpt = Annotated[
    float | None,
    typer.Option(
        min=0, help="The optimizer's weight_decay (default: its own).", show_default=False
    ),
]
MomentumOpt = Annotated[
    float | None,
    typer.Option(min=0, help="The optimizer's momentum (sgd, rmsprop).", show_default=False),
]
OptimizerArgsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--optimizer-arg",
        callback=_pairs("optimizer_args"),
        metavar="NAME=VALUE",
        help="Another argument of the torch.optim class (betas='[0.9,0.99]', nesterov=true).",
        show_default=False,
    ),
]
ScheduleOpt = Annotated[
    Schedule,
    typer.Option(
        "--lr-schedule",
        callback=lambda value: getattr(value, "value", value),
        help="Learning-rate schedule: cosine and step after each epoch, onecycle each batch.",
    ),
]
LrStepOpt = Annotated[
    int | None,
    typer.Option(
        min=1, max=10_000, help="--lr-schedule step: epochs per decay (1).", show_default=False
    ),
]
LrGammaOpt = Annotated[
    float | None,
    typer.Option(min=0, help="--lr-schedule step: the decay factor (0.1).", show_default=False),
]
WarmupOpt = Annotated[
    int, typer.Option(min=0, max=9_999, help="Epochs of linear warm-up from lr/10.")
]
ValSplitOpt = Annotated[
    float,
    typer.Option(
        min=0, max=0.5, help="Fraction of the training set held out for validation each epoch."
    ),
]
KeepOpt = Annotated[
    Keep,
    typer.Option(
        callback=lambda value: getattr(value, "value", value),
        help="The weights stored: the last epoch's, or the best by validation accuracy.",
    ),
]
PatienceOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=10_000,
        help="Stop when validation accuracy has not improved for this many epochs.",
        show_default=False,
    ),
]
GpusOpt = Annotated[
    Gpus, typer.Option(help="auto: a GPU if the cluster has one; 1: require one; 0: CPU.")
]
CpusOpt = Annotated[
    int,
    typer.Option(
        min=1,
        max=1024,
        help="CPUs the training task asks Ray for; on a CPU, torch's threads in it.",
    ),
]

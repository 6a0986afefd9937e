"""What the commands share for talking to a person: the two consoles, one failure idiom.

    from mnist_ray.ui import err, friendly
    err.print("progress goes to stderr")     # results go to stdout (`out`, or print)

Used by cli.py and jobs.py alike, so neither imports the other for it.
"""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from mnist_ray.config import ConfigError
from mnist_ray.data import DataError
from mnist_ray.errors import ClusterError
from mnist_ray.output import as_json as to_json  # noqa: F401 - one JSON printer
from mnist_ray.store import StoreError

# Piped output gets wide lines rather than tables folded to rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# What Ctrl-C leaves behind, for the commands that run Ray tasks; others say "interrupted".
INTERRUPTED = {
    "submit_train": "the Ray tasks were cancelled and nothing was written.",
    "evaluate": "the Ray tasks were cancelled and nothing was written.",
    "sweep": "every trial was stopped; finished trials keep their runs.",
}


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]Error:[/] {message}", markup=True)
    raise typer.Exit(code)


def friendly(fn):
    """One idiom for failures: a user's mistake or a runtime failure is one line, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise typer.BadParameter(exc.message, param_hint=f"'{exc.option}'") from None
        except (DataError, StoreError, ClusterError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:  # not an error: the user asked to stop
            left = INTERRUPTED.get(fn.__name__)
            err.print(f"interrupted: {left}" if left else "interrupted")
            raise typer.Exit(130) from None

    return wrapper

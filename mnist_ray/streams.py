"""stdout is the result, stderr everything else, in every mode.

    with ray_output_to_stderr():    # around a Ray session: nothing Ray says reaches stdout
        ...
    install_result_marker()         # in a Jobs API driver: result lines framed by a nonce
    LogSplitter(out, err)           # on the client: framed lines to stdout, the rest to stderr

Ray writes to the driver's stdout even with log_to_driver=False: the `(raylet) A worker
died ...` notices go through sys.stdout, and Ray's processes (the embedded ones inherit
the driver's file descriptor 1) print there too. So around a session both point at
stderr, and a worker-died notice becomes one line.

Through the Jobs API the job's stdout and stderr arrive as one log; the client gives the
job a nonce (an environment variable of that job alone), the job prefixes each result line
with it, and the client sends those lines, unprefixed, to stdout and the rest to stderr.
The stack dump Ray's driver prints when a stop request SIGTERMs it is left out (the
client says how the job ended, in its own words, from the job's status).
"""

from __future__ import annotations

import io
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

NONCE_VAR = "MNIST_RAY_RESULT_NONCE"  # set by the client in the job's runtime_env
# Also set there: the Jobs API address the user submitted to, so that a hint the job prints
# (how to resume, how to stop) carries the --address that works where the user pastes it.
ADDRESS_VAR = "MNIST_RAY_SUBMITTED_TO"
MARKER = re.compile(r"^mnist-ray-result-([0-9a-f]{16}) ")  # what a framed line starts with
# Ray's driver, on SIGTERM (`jobs stop`), prints a stack dump twice: as is, then through its
# logger (`[2026-01-01 10:00:00,000 E 123 123] logging.cc:474: ` before each line).
_RAY_LOG = r"(?:\[[^\]]*\] logging\.cc:\d+: )?"
_SIGTERM_DUMP = re.compile(_RAY_LOG + r"\*\*\* SIGTERM received at time=\d+.*\*\*\*\s*$")
_DUMP_FRAME = re.compile(_RAY_LOG + r"(?:PC: )?\s*@\s+0x[0-9a-f]+\b.*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def user_address(given: str | None) -> str | None:
    """The --address a hint should carry: the Jobs API address when this runs as a job that
    mnist-ray submitted, else the one the user gave this command (None: embedded)."""
    return os.environ.get(ADDRESS_VAR) or given


def new_nonce() -> str:
    return secrets.token_hex(8)


def marker(nonce: str) -> str:
    return f"mnist-ray-result-{nonce} "


# ---- the job's driver: result lines framed -----------------------------------------------------


class _Framed(io.TextIOBase):
    """sys.stdout of a Jobs API driver: every line it prints starts with the marker."""

    def __init__(self, sink, prefix: str):
        self.sink, self.prefix, self.pending = sink, prefix, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.sink.write(f"{self.prefix}{line}\n")
        self.sink.flush()
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.sink.write(f"{self.prefix}{self.pending}\n")
            self.pending = ""
        self.sink.flush()

    def isatty(self) -> bool:
        return False


def install_result_marker() -> None:
    """In a job submitted by mnist-ray (the nonce is in its environment), frame stdout."""
    nonce = os.environ.get(NONCE_VAR, "")
    if re.fullmatch(r"[0-9a-f]{16}", nonce) and not isinstance(sys.stdout, _Framed):
        sys.stdout = _Framed(sys.stdout, marker(nonce))


# ---- the client: a job's log split back into result and the rest -------------------------------


class LogSplitter:
    """Feed it the job's log in chunks of any size; lines framed by `nonce` (any nonce when
    None) go to `out` without the frame, every other line to `err`, except Ray's SIGTERM
    stack dump: `sigterm` then says that the driver got one."""

    def __init__(self, out, err, nonce: str | None = None):
        self.out, self.err, self.nonce, self.pending = out, err, nonce, ""
        self.sigterm = False
        self.last_error = ""  # the last `Error: ...` line of the log: why a job failed
        self._in_dump = False  # the frame lines that follow a dump's first line

    def feed(self, chunk: str) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""

    def _line(self, line: str) -> None:
        if _SIGTERM_DUMP.match(line) or (self._in_dump and _DUMP_FRAME.match(line)):
            self.sigterm = self._in_dump = True
            return
        self._in_dump = False
        framed = MARKER.match(line)
        if framed and (self.nonce is None or framed.group(1) == self.nonce):
            self.out.write(line[framed.end() :] + "\n")
            self.out.flush()
        else:
            if line.startswith("Error:"):
                self.last_error = line.removeprefix("Error:").strip()
            self.err.write(line + "\n")
            self.err.flush()


# ---- Ray's output off stdout ------------------------------------------------------------------


def one_line_notice(text: str) -> str:
    """A Ray notice (`(raylet) A worker died ... Worker PID: 123 ...`) as one line."""
    flat = " ".join(_ANSI.sub("", text).split())
    if "A worker died or was killed" in flat:
        pid = re.search(r"Worker PID: (\d+)", flat)
        exit_type = re.search(r"Worker exit type: (\w+)", flat)
        said = [f"pid {pid.group(1)}"] if pid else []
        said += [f"exit type {exit_type.group(1)}"] if exit_type else []
        said = f" ({', '.join(said)})" if said else ""
        return f"(raylet) A worker died or was killed while running a task{said}; Ray retries it"
    return flat


class _Notices(io.TextIOBase):
    """What Ray prints through sys.stdout, sent to stderr one line per notice."""

    def __init__(self, sink):
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text.strip():
            line = one_line_notice(text) if "(raylet)" in text else text.rstrip("\n")
            self.sink.write(line + "\n")
            self.sink.flush()
        return len(text)

    def flush(self) -> None:
        self.sink.flush()


@contextmanager
def ray_output_to_stderr() -> Iterator[None]:
    """Descriptor 1 and sys.stdout point at stderr until the block ends: Ray's notices go
    through sys.stdout, and the embedded Ray's processes inherit descriptor 1."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd, saved_stdout = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = _Notices(sys.stderr)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = saved_stdout
        os.dup2(saved_fd, 1)
        os.close(saved_fd)

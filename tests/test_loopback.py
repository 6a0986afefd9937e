"""The embedded Ray listens on loopback only, every process of it, with token auth on.

    sudo PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_loopback.py -q

One test lists the listening TCP sockets of the whole process tree of an embedded
`mnist-ray submit train` while it trains (/proc/net/tcp{,6} against each process's
/proc/PID/fd); the other knocks on every one of those ports from a network namespace joined
to this host by a veth pair, the way another machine would. The namespace needs root
(`ip netns add`) and iproute2; without root that test skips, its reason starting "needs
root:" (one of the skips .ci/run accepts).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import VENV_BIN, client_env
from ray.dashboard.consts import DASHBOARD_METRIC_PORT

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process

PROBE = Path(__file__).with_name("netprobe.py")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def listeners(root: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of root's process tree."""
    kids, tree, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += kids.get(pid, [])
    owner = {}
    for pid in tree:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        owner[link[8:-1]] = name
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((owner[fields[9]], socket.inet_ntop(family, raw), int(hexport, 16)))
    return found


def is_loopback(address: str) -> bool:
    return address.startswith(("127.", "::ffff:127.")) or address == "::1"


class EmbeddedRun:
    """`mnist-ray submit train` with its own embedded Ray, until its first epoch is done."""

    def __init__(self, tmp_path: Path, mnist_data: Path):
        self.env = client_env(tmp_path, MNIST_RAY_DATA=str(mnist_data))
        # long enough to look at while it runs; stopped with Ctrl-C when done
        args = ["submit", "train", "--epochs", "2000", "--store", str(tmp_path / "store")]
        self.proc = subprocess.Popen(
            [f"{VENV_BIN}/mnist-ray", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.training = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("Epoch: 0001"):
                self.training.set()

    def wait_training(self) -> None:
        assert self.training.wait(240), "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # Ctrl-C: the command stops its Ray on the way out
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def embedded(tmp_path, mnist_data):
    run = EmbeddedRun(tmp_path, mnist_data)
    try:
        run.wait_training()
        yield run
    finally:
        run.stop()


def probe(host: str, ports: list[int], netns: str | None = None) -> list[dict]:
    cmd = [sys.executable, str(PROBE), host, *map(str, ports)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_process_of_the_embedded_ray_listens_on_loopback_only(embedded):
    found = listeners(embedded.proc.pid)
    names = {name for name, _, _ in found}
    # the whole tree, not a part of it: the GCS, the raylet, the driver, a worker, the agents
    for name in ("gcs_server", "raylet", "mnist-ray", "ray::DashboardA", "ray::RuntimeEnv"):
        assert name in names, found
    assert any(n.startswith("ray::train") for n in names), found
    outside = [f for f in found if not is_loopback(f[1])]
    assert outside == [], outside
    # token auth is on: on loopback too, Ray's servers refuse a caller without the token
    results = probe("127.0.0.1", [port for _, _, port in found])
    for result in results:  # every port: HTTP 401, or gRPC UNAUTHENTICATED for its service
        assert result["tcp"] == "open", result
        said = result.get("http") or set(result["grpc"].values())
        if result["port"] == DASHBOARD_METRIC_PORT and said == 200:
            # The one exception, Ray's and not ours to switch off (Ray 2.60 starts it with
            # no option against it): the dashboard serves its own Prometheus metrics without
            # a token. Read-only text, and on loopback only (checked above).
            with urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_METRIC_PORT}/") as got:
                body = got.read().decode()
            assert body.startswith("# HELP "), body[:200]
            continue
        assert said in (401, {"UNAUTHENTICATED", "UNIMPLEMENTED"}), result
    # and no token file was left in the user's home for a later `ray start` to pick up
    assert not (Path(embedded.env["HOME"]) / ".ray" / "auth_token").exists()


@contextlib.contextmanager
def network_namespace():
    """A namespace joined to this host by a veth pair on a private /30 of our own."""
    assert shutil.which("ip"), "no `ip` command: install iproute2 (.ci/run does)"
    if os.geteuid() != 0:
        pytest.skip("needs root: creating a network namespace (`ip netns add`)")
    tag = secrets.token_hex(3)
    ns, host_end, ns_end = f"mr-{tag}", f"mrh{tag}", f"mrn{tag}"
    third = int(tag[:2], 16) % 250 + 1
    host_ip, ns_ip = f"169.254.{third}.1", f"169.254.{third}.2"

    def ip(*args: str, netns: bool = False) -> subprocess.CompletedProcess:
        cmd = ["ip", *(["netns", "exec", ns, "ip"] if netns else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    made = ip("netns", "add", ns)
    if made.returncode != 0:
        pytest.skip(f"needs root: ip netns add is not permitted here: {made.stderr.strip()}")
    try:
        steps = [
            (("link", "add", host_end, "type", "veth", "peer", "name", ns_end), False),
            (("link", "set", ns_end, "netns", ns), False),
            (("addr", "add", f"{host_ip}/30", "dev", host_end), False),
            (("link", "set", host_end, "up"), False),
            (("addr", "add", f"{ns_ip}/30", "dev", ns_end), True),
            (("link", "set", ns_end, "up"), True),
            (("link", "set", "lo", "up"), True),
            (("route", "add", "default", "via", host_ip), True),  # the host's other addresses
        ]
        for args, inside in steps:
            done = ip(*args, netns=inside)
            if done.returncode != 0:
                pytest.skip(f"needs root: ip {' '.join(args)}: {done.stderr.strip()}")
        yield ns, host_ip
    finally:
        ip("link", "del", host_end)
        ip("netns", "del", ns)


def host_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (the ones another machine would use)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not a.startswith("127.")]


def test_nothing_of_an_embedded_run_answers_from_another_network_namespace(embedded):
    ports = sorted({port for _, _, port in listeners(embedded.proc.pid)})
    assert len(ports) >= 6  # the GCS, the raylet's two, the driver, a worker, the agents
    with network_namespace() as (ns, host_ip):
        # the path works: a server of ours on all interfaces does answer from the namespace
        with socket.create_server(("0.0.0.0", 0)) as control:
            reached = probe(host_ip, [control.getsockname()[1]], netns=ns)
            assert reached[0]["tcp"] == "open", reached
        for address in {host_ip, *host_addresses()}:
            for result in probe(address, ports, netns=ns):
                answered = result["tcp"] == "open" and (
                    result.get("http") not in (None, 401, 403)
                    or "OK" in result.get("grpc", {}).values()
                )
                assert result["tcp"] == "closed" or not answered, (address, result)
                assert result["tcp"] == "closed", (address, result)  # loopback only: refused
    assert embedded.proc.poll() is None  # the run was live throughout
    assert sorted({port for _, _, port in listeners(embedded.proc.pid)}) != []

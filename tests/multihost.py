"""Real ``redis-server`` and ``haproxy`` processes for the several-hosts tests and benchmark, on free ports.

Each simulated host is a wsup instance bound to its own 127.0.0.x address; what would be separate machines share
this one. A test that needs a program this machine lacks is skipped with the reason (``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from tests.wsup_harness import free_port, wait_until


def need(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        pytest.skip(f"{program} is not installed (apt-get install {program}; .ci/run installs it)")
    return path


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, no persistence; ``stop`` and ``start`` again keep its port."""

    def __init__(self, password: str | None = None, port: int | None = None) -> None:
        self.binary = need("redis-server")
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open("127.0.0.1", self.port), 15, 0.05, "redis-server listening")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(password).start()
    try:
        yield server
    finally:
        server.stop()


HAPROXY_CONFIG = """\
global
    maxconn 4000
    stats socket {stats} mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend front
    bind 127.0.0.1:{port}
    default_backend hosts
backend hosts
    balance {balance}
{servers}
"""


class HAProxy:
    """``haproxy`` in front of ``hosts`` ((address, port, agent_port) each), on 127.0.0.1:``port``."""

    def __init__(self, hosts: list[tuple[str, int, int | None]], balance: str = "leastconn", inter_ms: int = 200):
        self.binary = need("haproxy")
        self.port = free_port()
        lines = []
        for index, (address, port, agent_port) in enumerate(hosts):
            agent = f" agent-check agent-port {agent_port} agent-inter {inter_ms}ms" if agent_port else ""
            lines.append(f"    server h{index} {address}:{port} weight 100 check inter {inter_ms}ms{agent}")
        self.directory = Path(tempfile.mkdtemp(prefix="wsup-hap", dir="/tmp"))
        self.config = self.directory / "haproxy.cfg"
        self.stats = self.directory / "stats.sock"
        self.config.write_text(
            HAPROXY_CONFIG.format(port=self.port, balance=balance, servers="\n".join(lines), stats=self.stats)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_open("127.0.0.1", self.port), 15, 0.05, "haproxy listening")
        return self

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers: name -> {"status": "UP"/"DRAIN"/..., "weight": ..., "scur": ...}."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row.get("pxname") == "hosts" and row["svname"] != "BACKEND"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def agent_answer(host: str, port: int) -> str:
    """Ask an agent-check port what HAProxy would hear."""
    with socket.create_connection((host, port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(256):
            data += chunk
    return data.decode("ascii").strip()


def pid_in_greeting(greeting: str | bytes) -> int:
    """The worker pid a server greets with: ``{"type": "hello", "pid": N}`` (app:asgi) or ``ready N`` (bench)."""
    if isinstance(greeting, str) and greeting.startswith("ready "):
        return int(greeting.split(" ")[1])
    return int(orjson.loads(greeting)["pid"])


class Roamer:
    """A client that reconnects through the balancer whenever the server closes it, as a browser app does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pids: list[int] = []
        self.close_codes: list[int | None] = []
        self.failed_connects = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                ws = await connect(self.url, open_timeout=30, ping_interval=None)
                self.pids.append(pid_in_greeting(await asyncio.wait_for(ws.recv(), 30)))
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException):
                self.failed_connects += 1
                await asyncio.sleep(0.1)
                continue
            stopping = asyncio.ensure_future(stop.wait())
            closed = asyncio.ensure_future(ws.wait_closed())
            await asyncio.wait([stopping, closed], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if closed.done():
                self.close_codes.append(ws.close_code)
            else:
                await ws.close()
                closed.cancel()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)

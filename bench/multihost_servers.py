"""The servers of the several-hosts benchmark (bench/multihost.py): three wsup instances, or three Socket.IO
nodes, one per simulated host address, all bridged through one Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.multihost import RedisServer, port_open  # noqa: E402
from tests.wsup_harness import free_port, wait_until  # noqa: E402

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
WSUP = [sys.executable, str(REPO / "bin" / "wsup")]


class Hosts:
    """Three wsup instances, each its own "host" (name h1..h3, same bridge prefix, same port, same agent port)."""

    def __init__(self, redis: RedisServer) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="wsup-mh", dir="/tmp"))
        self.env = {**os.environ, "WSUP_RUN_DIR": str(self.run_dir)}
        self.port, self.agent_port = free_port(), free_port()
        self.procs = []
        for index, address in enumerate(ADDRESSES):
            args = ["start", "broadcast_apps:wsup_app", "--app-dir", "bench", "--name", f"h{index + 1}"]
            args += ["--host", address, "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
            args += ["--bridge", redis.url, "--bridge-prefix", "wsup:bench:", "--agent-port", str(self.agent_port)]
            log = open(self.run_dir / f"h{index + 1}.log", "wb")
            self.procs.append(subprocess.Popen([*WSUP, *args], env=self.env, cwd=REPO, stdout=log, stderr=log))
        for index in range(3):
            wait_until(lambda i=index: self.status(i)["totals"]["ready"] == 1, 60, 0.2, f"h{index + 1} ready")

    def cli(self, index: int, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*WSUP, *args, "--name", f"h{index + 1}"]
        return subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=60)

    def status(self, index: int) -> dict[str, Any]:
        result = self.cli(index, "status", "--json")
        return orjson.loads(result.stdout) if result.returncode == 0 else {"totals": {"ready": 0}}

    def websockets(self) -> list[int]:
        return [int(self.status(i)["totals"]["connections"]["websocket"]) for i in range(3)]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        shutil.rmtree(self.run_dir, ignore_errors=True)


NODE_DIR = Path.home() / ".cache" / "wsup-bench" / "node-mh"
NODE_PACKAGES = ("socket.io@4.8", "@socket.io/redis-adapter@8.3", "redis@4.7")


class NodeHosts:
    """The Socket.IO peer: one ``node multihost_socketio.js`` per address, one Redis between them."""

    def __init__(self, redis: RedisServer) -> None:
        if not (NODE_DIR / "node_modules" / "@socket.io" / "redis-adapter").exists():
            NODE_DIR.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), *NODE_PACKAGES],
                check=True,
                capture_output=True,
                timeout=600,
            )
        self.port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="wsup-mhn", dir="/tmp"))
        env = {
            **os.environ,
            "PORT": str(self.port),
            "REDIS_URL": redis.url,
            "NODE_PATH": str(NODE_DIR / "node_modules"),
        }
        self.procs = []
        self.logs = []
        for address in ADDRESSES:
            log = self.run_dir / f"{address}.log"
            self.logs.append(log)
            script = str(REPO / "bench" / "multihost_socketio.js")
            out = open(log, "wb")
            self.procs.append(subprocess.Popen(["node", script], env={**env, "HOST": address}, stdout=out, stderr=out))
        wait_until(lambda: all(b"ready" in log.read_bytes() for log in self.logs), 60, 0.2, "node hosts ready")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.run_dir, ignore_errors=True)


class PySocketIOHosts:
    """The python-socketio peer: one ``uvicorn multihost_pysio:app`` per address, AsyncRedisManager between them."""

    def __init__(self, redis: RedisServer) -> None:
        self.port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="wsup-mhp", dir="/tmp"))
        env = {**os.environ, "BENCH_REDIS_URL": redis.url}
        self.procs = []
        self.logs = []
        for address in ADDRESSES:
            log = self.run_dir / f"{address}.log"
            self.logs.append(log)
            out = open(log, "wb")
            argv = [sys.executable, "-m", "uvicorn", "multihost_pysio:app", "--app-dir", str(REPO / "bench")]
            argv += ["--host", address, "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
            self.procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=out))
        wait_until(lambda: all(port_open(a, self.port) for a in ADDRESSES), 60, 0.2, "uvicorn hosts ready")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.run_dir, ignore_errors=True)

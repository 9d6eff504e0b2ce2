"""The stacks under test in the broadcast benchmark: how each is installed, started, found ready, measured (CPU
time and memory of every server-side process, Redis included) and stopped with its whole process group."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil
from throughput_system import package_versions

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
NODE_DIR = Path(os.environ.get("WSUP_BENCH_NODE_DIR", Path.home() / ".cache" / "wsup-bench" / "node"))
NODE_PACKAGES = ("socket.io@4.8", "@socket.io/redis-adapter@8.3", "redis@4.7", "pm2@7")
READY_TIMEOUT_S = 60.0

# The Socket.IO peer: the same /sub and /pub roles as bench/broadcast_apps.py, as a namespace with a room.
SOCKETIO_SERVER = r"""
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const pubClient = createClient({ url: process.env.REDIS_URL });
const subClient = pubClient.duplicate();
Promise.all([pubClient.connect(), subClient.connect()]).then(() => {
  const server = http.createServer((req, res) => res.end("ok " + process.pid));
  const io = new Server(server, {
    adapter: createAdapter(pubClient, subClient),
    transports: ["websocket"],
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    if (socket.handshake.query.role === "pub") {
      socket.on("publish", (payload) => io.to("bench").emit("msg", payload));
    } else {
      socket.join("bench");
    }
    socket.emit("ready", process.pid);
  });
  server.listen(+process.env.PORT, "127.0.0.1", () => console.log("ready " + process.pid));
});
"""


class BenchError(RuntimeError):
    """A stack could not be installed, started or measured: the report says why instead of a number."""


@dataclass
class Running:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # redis-server
    run_dir: str | None = None

    def processes(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for popen in (self.proc, *self.helpers):
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(popen.pid)
                procs += [root, *root.children(recursive=True)]
        return procs

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def wsup_status(self) -> dict[str, object]:
        env = {**os.environ, "WSUP_RUN_DIR": self.run_dir or ""}
        out = subprocess.run(
            [sys.executable, str(REPO / "bin" / "wsup"), "status", "--name", "bbench", "--json"],
            capture_output=True,
            env=env,
            timeout=30,
            check=True,
        )
        status: dict[str, object] = orjson.loads(out.stdout)
        return status

    def stop(self) -> None:
        for popen in (self.proc, *self.helpers):
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for popen in (self.proc, *self.helpers):
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = BENCH) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _http_ok(port: int) -> str | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        body = conn.getresponse().read().decode()
        conn.close()
        return body
    except OSError:
        return None


def _wait(predicate: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not predicate():  # type: ignore[operator]
        if proc.poll() is not None:
            raise BenchError(f"{what}: exited with {proc.returncode}: {log.read_text(errors='replace')[-600:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready in {READY_TIMEOUT_S:g}s: {log.read_text(errors='replace')[-600:]}")
        time.sleep(0.1)


def start_redis(port: int, log: Path) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not installed (Debian: apt-get install -y redis-server)")
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = _spawn(argv, log)
    _wait(lambda: b"Ready to accept connections" in log.read_bytes(), "redis-server", proc, log)
    return proc


def start_wsup(port: int, workers: int, log: Path, extra: list[str] | None = None) -> Running:
    run_dir = tempfile.mkdtemp(prefix="wsup-bb", dir="/tmp")
    env = {**os.environ, "WSUP_RUN_DIR": run_dir}
    argv = [sys.executable, str(REPO / "bin" / "wsup"), "start", "broadcast_apps:wsup_app", "--app-dir", str(BENCH)]
    argv += ["-i", str(workers), "--port", str(port), "--name", "bbench", "--no-access-log", "--log-level", "warning"]
    argv += extra or []
    running = Running("wsup", port, _spawn(argv, log, env), log, run_dir=run_dir)

    def ready() -> bool:
        try:
            totals = running.wsup_status()["totals"]
        except (subprocess.SubprocessError, orjson.JSONDecodeError):
            return False
        return isinstance(totals, dict) and totals.get("ready") == workers

    try:
        _wait(ready, "wsup", running.proc, log)
    except BenchError:
        running.stop()
        raise
    return running


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}


def start_broadcaster(port: int, workers: int, redis_port: int, log: Path, workaround: bool = True) -> Running:
    try:
        import broadcaster  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        raise BenchError("broadcaster is not installed (.venv/bin/pip install broadcaster redis)") from None
    helper = start_redis(redis_port, log.with_suffix(".redis.log"))
    env = {**_python_env(), "BENCH_REDIS_URL": f"redis://127.0.0.1:{redis_port}"}
    env["BENCH_BROADCASTER_WORKAROUND"] = "1" if workaround else "0"
    argv = [sys.executable, "-m", "uvicorn", "broadcast_apps:broadcaster_app", "--factory", "--app-dir", str(BENCH)]
    argv += ["--workers", str(workers), "--port", str(port), "--no-access-log", "--log-level", "warning"]
    running = Running("broadcaster", port, _spawn(argv, log, env), log, [helper])
    try:
        _wait(lambda: _workers_answering(port, workers), "uvicorn + broadcaster", running.proc, log)
    except BenchError:
        running.stop()
        raise
    return running


def _workers_answering(port: int, workers: int) -> bool:
    pids = set()
    for _ in range(8 * workers):  # the kernel picks the worker: ask until every one has answered once
        body = _http_ok(port)
        if body is None:
            return False
        pids.add(body.split()[-1])
        if len(pids) == workers:
            return True
    return False


def ensure_node_packages() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise BenchError("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / ".bin" / "pm2-runtime").exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), *NODE_PACKAGES],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise BenchError(f"npm install failed: {result.stderr.strip()[-300:]}")
    (NODE_DIR / "server.js").write_text(SOCKETIO_SERVER)
    return NODE_DIR


def start_socketio(port: int, workers: int, redis_port: int, log: Path) -> Running:
    node_dir = ensure_node_packages()
    helper = start_redis(redis_port, log.with_suffix(".redis.log"))
    pm2_home = tempfile.mkdtemp(prefix="wsup-bench-pm2-")
    env = {**os.environ, "PORT": str(port), "REDIS_URL": f"redis://127.0.0.1:{redis_port}", "PM2_HOME": pm2_home}
    argv = [str(node_dir / "node_modules" / ".bin" / "pm2-runtime"), "start", "server.js", "-i", str(workers)]
    running = Running("socketio", port, _spawn(argv, log, env, cwd=node_dir), log, [helper], run_dir=pm2_home)
    try:
        _wait(lambda: log.read_bytes().count(b"ready ") >= workers, "PM2 + Socket.IO", running.proc, log)
    except BenchError:
        running.stop()
        raise
    return running


def versions() -> dict[str, str]:
    found = package_versions(("uvicorn", "starlette", "websockets", "pyzmq", "broadcaster", "redis"))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        found["redis-server"] = found["redis-server"].split("v=")[1].split()[0]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    for package in ("socket.io", "@socket.io/redis-adapter", "pm2"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = orjson.loads((NODE_DIR / "node_modules" / package / "package.json").read_bytes())
            found[package] = meta["version"]
    return found

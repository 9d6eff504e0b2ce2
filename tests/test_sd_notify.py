"""systemd's notification protocol, received on a datagram socket the test creates (as systemd would), and the
unit file `wsup systemd-unit` prints."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.wsup_harness import Instance, run_cli


class NotifySocket:
    """What systemd does with NOTIFY_SOCKET: bind it, and read every datagram as it comes (in a thread: the
    socket's queue is short, and the supervisor never blocks on a full one)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.queue: queue.Queue[dict[str, str]] = queue.Queue()
        self.received: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queue.put(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0) -> dict[str, str]:
        """The first datagram (from now on, or already received and not yet consumed) with ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, fields in enumerate(self.received):
                if key in fields and (value is None or fields[key] == value):
                    del self.received[: index + 1]
                    return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value} from the supervisor within {timeout}s: {self.received[-5:]}")
            try:
                self.received.append(self.queue.get(timeout=0.2))
            except queue.Empty:
                continue

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_reload_watchdog_and_stop(
    start_wsup: Callable[..., Instance], wsup_env: dict[str, str], run_dir: Path, abstract: bool
) -> None:
    name = f"wsup-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    notify = NotifySocket(b"\0" + name.encode() if abstract else str(run_dir / "notify"))
    try:
        wsup_env["NOTIFY_SOCKET"] = "@" + name if abstract else str(run_dir / "notify")
        wsup_env["WATCHDOG_USEC"] = "400000"
        wsup = start_wsup("app:asgi", "-i", "2")
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            del wsup_env[key]  # the CLI commands below are not the service
        ready = notify.wait_for("READY", "1")
        assert ready["MAINPID"] == str(wsup.proc.pid)
        assert ready["STATUS"].startswith("2/2 workers ready")
        status = wsup.status()
        assert status["totals"]["ready"] == 2  # READY=1 came once every worker was ready
        notify.wait_for("WATCHDOG", "1")
        notify.wait_for("WATCHDOG", "1")
        result = wsup.cli("reload", "--name", wsup.name)
        assert result.returncode == 0, result.stderr
        reloading = notify.wait_for("RELOADING", "1")
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now_usec - int(reloading["MONOTONIC_USEC"]) < 120_000_000
        notify.wait_for("READY", "1")
        # Workers never inherit the socket: only the supervisor speaks for the service.
        for worker in wsup.status()["workers"]:
            environ = Path(f"/proc/{worker['pid']}/environ").read_bytes()
            assert b"NOTIFY_SOCKET=" not in environ
        assert wsup.cli("stop", "--name", wsup.name).returncode == 0
        notify.wait_for("STOPPING", "1")
    finally:
        notify.close()


def test_systemd_unit(wsup_env: dict[str, str], run_dir: Path) -> None:
    result = run_cli("systemd-unit", "app:asgi", "-i", "3", "--graceful-timeout", "20", "--daemon", env=wsup_env)
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    lines = set(unit.splitlines())
    assert {"Type=notify", "KillMode=mixed", "TimeoutStopSec=35", "NotifyAccess=main"} <= lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert " start app:asgi -i 3 --graceful-timeout 20 --name app" in exec_start and "--daemon" not in exec_start
    assert any(line.startswith("ExecReload=") and line.endswith(" reload --name app --timeout 30") for line in lines)
    assert any(line.startswith("LimitNOFILE=") for line in lines)
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # systemd's own parser: every key known, every value valid
        path = run_dir / "wsup-app.service"
        path.write_text(unit)
        verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and "wsup-app.service" not in verify.stderr, verify.stderr
    refused = run_cli("systemd-unit", "app:asgi", "--admin", "9100", "--admin-token", "x" * 20, env=wsup_env)
    assert refused.returncode == 2 and "EnvironmentFile" not in refused.stderr and "WSUP_ADMIN_TOKEN" in refused.stderr

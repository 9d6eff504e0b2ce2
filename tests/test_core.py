"""Integration tests of the core: real `wsup` processes, real sockets, real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import psutil

from tests.clients import close_all, http_get, open_websockets, tally
from tests.wsup_harness import Instance, port_is_free, wait_until


def _listener_inodes(pid: int, port: int) -> set[int]:
    """Inodes of the listening sockets on ``port`` that process ``pid`` holds: the same inode is the same socket."""
    return {
        os.stat(f"/proc/{pid}/fd/{conn.fd}").st_ino
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


def test_status_counts_match_what_clients_see(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "4")
    wsup.wait_ready(4)

    async def scenario() -> None:
        connections = await open_websockets(f"{wsup.ws_url}/ws", 400)
        try:
            seen = tally(connections)
            assert sum(seen.values()) == 400
            assert len(seen) == 4, f"every worker should hold WebSockets, got {seen}"

            def counts_match() -> bool:
                status = wsup.status()
                reported = {w["pid"]: w["connections"]["websocket"] for w in status["workers"]}
                return reported == seen and status["totals"]["connections"]["websocket"] == 400

            await asyncio.to_thread(wait_until, counts_match, 15.0, 0.1, "status counts equal to client tallies")
        finally:
            await close_all(connections)
        await asyncio.to_thread(
            wait_until,
            lambda: wsup.status()["totals"]["connections"]["websocket"] == 0,
            15.0,
            0.1,
            "WebSocket counts back to zero",
        )

    asyncio.run(scenario())


def test_keepalive_http_connections_are_counted(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    wsup.wait_ready(2)
    clients = [http.client.HTTPConnection("127.0.0.1", wsup.port, timeout=10) for _ in range(6)]
    try:
        for client in clients:
            client.request("GET", "/health")
            assert client.getresponse().read()
        wait_until(lambda: wsup.status()["totals"]["connections"]["http"] == 6, 10, 0.1, "6 keep-alive connections")
        status = wsup.status()
        assert status["totals"]["served"] >= 6
        assert all(w["connections"]["websocket"] == 0 for w in status["workers"])
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: wsup.status()["totals"]["connections"]["http"] == 0, 10, 0.1, "HTTP counts back to zero")


def test_killed_worker_is_replaced_on_the_same_slot_and_socket(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "3")
    before = wsup.wait_ready(3)
    victim = next(w for w in before["workers"] if w["slot"] == 1)
    supervisor_pid = before["supervisor"]["pid"]
    inode_before = _listener_inodes(victim["pid"], wsup.port)
    assert inode_before and inode_before <= _listener_inodes(supervisor_pid, wsup.port)

    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        row = next(w for w in wsup.status()["workers"] if w["slot"] == 1)
        return row if row["state"] == "ready" and row["pid"] not in (None, victim["pid"]) else None

    row = wait_until(replaced, 20, 0.1, "slot 1 replaced")
    assert row["restarts"] == 1
    assert _listener_inodes(int(row["pid"]), wsup.port) == inode_before
    others = {w["slot"]: w["pid"] for w in wsup.status()["workers"] if w["slot"] != 1}
    assert others == {w["slot"]: w["pid"] for w in before["workers"] if w["slot"] != 1}
    status, _ = http_get(wsup.port)
    assert status == 200


def test_killing_the_supervisor_takes_every_worker_down(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "3")
    status = wsup.wait_ready(3)
    workers = [psutil.Process(w["pid"]) for w in status["workers"]]
    os.kill(status["supervisor"]["pid"], signal.SIGKILL)
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphan workers: {[p.pid for p in alive]}"
    wait_until(lambda: port_is_free(wsup.port), 10, 0.05, "the port to be free")
    result = wsup.cli("status", "--name", wsup.name)
    assert result.returncode == 3, result
    # The name is free again: a new supervisor can take it over.
    result = wsup.cli("start", "app:asgi", "--name", wsup.name, "--port", str(wsup.port), "--daemon")
    assert result.returncode == 0, result.stderr
    assert wsup.cli("stop", "--name", wsup.name).returncode == 0


def test_stop_drains_and_frees_the_port(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    status = wsup.wait_ready(2)
    procs = [psutil.Process(w["pid"]) for w in status["workers"]] + [psutil.Process(status["supervisor"]["pid"])]

    async def scenario() -> list[int | None]:
        connections = await open_websockets(f"{wsup.ws_url}/ws", 10)
        result = await asyncio.to_thread(wsup.cli, "stop", "--name", wsup.name)
        assert result.returncode == 0, result.stderr + wsup.log()
        assert "stopped" in result.stdout
        codes = []
        for ws, _ in connections:
            await ws.wait_closed()
            codes.append(ws.close_code)
        return codes

    codes = asyncio.run(scenario())
    assert codes == [1001] * 10  # Going Away, sent by the server, for every client
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert port_is_free(wsup.port)
    assert wsup.proc.wait(10) == 0


def test_daemon_start_status_stop(start_wsup: Callable[..., Instance], wsup_env: dict[str, str]) -> None:
    from tests.wsup_harness import free_port, run_cli

    port = free_port()
    result = run_cli("start", "app:asgi", "-i", "2", "--port", str(port), "--name", "d", "--daemon", env=wsup_env)
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{port}" in result.stdout
    try:
        assert http_get(port)[0] == 200
        shown = run_cli("status", env=wsup_env)  # the only instance: no --name needed
        assert shown.returncode == 0 and "ready" in shown.stdout, shown
    finally:
        stopped = run_cli("stop", "--name", "d", env=wsup_env)
    assert stopped.returncode == 0, stopped.stderr
    assert port_is_free(port)


def test_several_instances_are_listed(start_wsup: Callable[..., Instance]) -> None:
    first = start_wsup("app:asgi", name="one")
    second = start_wsup("app:asgi", name="two")
    first.wait_ready(1)
    second.wait_ready(1)
    listing = first.cli("status")
    assert listing.returncode == 0
    assert "one" in listing.stdout and "two" in listing.stdout and "--name" in listing.stdout
    assert first.cli("stop").returncode == 2  # ambiguous: refuses to guess


def test_socket_is_really_shared(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    wsup.wait_ready(2)
    with socket.create_connection(("127.0.0.1", wsup.port), timeout=5):
        pass
    assert http_get(wsup.port)[0] == 200

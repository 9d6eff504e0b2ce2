"""Rolling reload, SIGHUP, rollback on a bad deploy, scale and restart, under real client load."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.clients import http_get
from tests.load import HttpLoad, ReconnectingClient, disconnects
from tests.wsup_harness import APPS_DIR, Instance, wait_until


def _loads(port: int) -> list[HttpLoad]:
    return [HttpLoad(port, clients=6, keep_alive=True).start(), HttpLoad(port, clients=3, keep_alive=False).start()]


def _stop_and_check(loads: list[HttpLoad]) -> None:
    for load in loads:
        load.stop()
    for load in loads:
        assert load.ok > 0
        assert load.failures == [], (
            f"{len(load.failures)} failed requests (keep_alive={load.keep_alive}): {load.failures[:5]}"
        )


def test_reload_under_http_load_fails_no_request(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "4")
    before = set(wsup.wait_ready(4) and wsup.worker_pids().values())
    loads = _loads(wsup.port)
    try:
        wait_until(lambda: all(load.ok > 20 for load in loads), 20, 0.05, "load to be flowing")
        for _ in range(2):
            result = wsup.cli("reload", "--name", wsup.name)
            assert result.returncode == 0, result.stderr
    finally:
        _stop_and_check(loads)
    assert result.stdout.count(" -> ") == 4 and "reloaded 4 workers" in result.stdout
    after = set(wsup.worker_pids().values())
    assert len(after) == 4 and not after & before


def test_websocket_clients_are_closed_with_1012_exactly_once(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "4", "--ws-drain-window", "1")
    old_pids = set(wsup.wait_ready(4) and wsup.worker_pids().values())

    async def scenario() -> list[ReconnectingClient]:
        stop = asyncio.Event()
        clients = [ReconnectingClient(f"{wsup.ws_url}/ws") for _ in range(120)]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await asyncio.to_thread(wait_until, lambda: all(c.pids for c in clients), 30, 0.05, "all connected")
            result = await asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name)
            assert result.returncode == 0, result.stderr
            await asyncio.to_thread(
                wait_until, lambda: all(len(c.pids) >= 2 for c in clients), 30, 0.05, "every client reconnected"
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return clients

    clients = asyncio.run(scenario())
    assert disconnects(clients) == {1: 120}, disconnects(clients)
    assert all(c.close_codes == [1012] for c in clients)
    new_pids = set(wsup.worker_pids().values())
    assert all(c.pids[0] in old_pids and c.pids[-1] in new_pids for c in clients)


def test_no_client_is_sent_to_a_worker_the_same_reload_will_replace(start_wsup: Callable[..., Instance]) -> None:
    # Clients closed by the first slot's drain reconnect while slots 2 and 3 still run their old workers, and new
    # clients arrive meanwhile: every one of them must land on a replaced worker (its greeting names the worker's
    # pid), or the same reload would close it a second time.
    wsup = start_wsup("app:asgi", "-i", "3", "--ws-drain-window", "1")
    old_pids = set(wsup.wait_ready(3) and wsup.worker_pids().values())

    async def scenario() -> tuple[list[ReconnectingClient], list[ReconnectingClient]]:
        stop = asyncio.Event()
        clients = [ReconnectingClient(f"{wsup.ws_url}/ws") for _ in range(45)]
        late = [ReconnectingClient(f"{wsup.ws_url}/ws") for _ in range(15)]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await asyncio.to_thread(wait_until, lambda: all(c.pids for c in clients), 30, 0.05, "all connected")
            reload = asyncio.create_task(asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name))
            await asyncio.to_thread(
                wait_until, lambda: any(c.close_codes for c in clients), 60, 0.01, "the first slot to drain"
            )
            tasks += [asyncio.create_task(c.run(stop)) for c in late]  # arrive while the first slot drains
            result = await reload
            assert result.returncode == 0, result.stderr
            await asyncio.to_thread(
                wait_until,
                lambda: all(len(c.pids) >= 2 for c in clients) and all(c.pids for c in late),
                30, 0.05, "every client (re)connected",
            )  # fmt: skip
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return clients, late

    clients, late = asyncio.run(scenario())
    new_pids = set(wsup.worker_pids().values())
    assert len(new_pids) == 3 and not new_pids & old_pids
    assert disconnects(clients) == {1: len(clients)}, disconnects(clients)
    assert all(c.close_codes == [1012] for c in clients)
    assert all(c.pids[0] in old_pids and set(c.pids[1:]) <= new_pids for c in clients), [c.pids for c in clients]
    assert all(set(c.pids) <= new_pids and c.close_codes == [] for c in late), [c.pids for c in late]


def _deploy(app_dir: Path, source: str) -> None:
    shutil.rmtree(app_dir / "__pycache__", ignore_errors=True)
    (app_dir / "versioned.py").write_text(source)


def test_bad_deploy_keeps_the_old_workers_serving(start_wsup: Callable[..., Instance], run_dir: Path) -> None:
    app_dir = run_dir / "site"
    app_dir.mkdir()
    good = (APPS_DIR / "versioned.py").read_text()
    _deploy(app_dir, good)
    wsup = start_wsup("versioned:asgi", "-i", "2", "--app-dir", str(app_dir))
    wsup.wait_ready(2)
    pids = wsup.worker_pids()

    broken = {
        "import error": (good + "\nraise RuntimeError('missing SECRET_KEY')\n", "RuntimeError: missing SECRET_KEY"),
        "startup error": (
            good.replace(
                'VERSION = "1"', 'VERSION = "x"\n\nasync def _boom(app):\n    raise RuntimeError("no db")\n    yield\n'
            ).replace(
                "asgi = Starlette(routes=",
                "from contextlib import asynccontextmanager\nasgi = Starlette("
                "lifespan=asynccontextmanager(_boom), routes=",
            ),
            "no db",
        ),
    }
    for what, (source, expected) in broken.items():
        _deploy(app_dir, source)
        result = wsup.cli("reload", "--name", wsup.name)
        assert result.returncode == 1, (what, result.stdout, result.stderr)
        assert expected in result.stderr and "old workers keep serving" in result.stderr, (what, result.stderr)
        assert wsup.worker_pids() == pids, what
        status, body = http_get(wsup.port, "/hello")
        assert status == 200 and body.startswith(b"version 1"), (what, body)

    _deploy(app_dir, good.replace('VERSION = "1"', 'VERSION = "2"'))
    result = wsup.cli("reload", "--name", wsup.name)
    assert result.returncode == 0, result.stderr
    assert not set(wsup.worker_pids().values()) & set(pids.values())
    assert http_get(wsup.port, "/hello")[1].startswith(b"version 2")


def test_sighup_reloads_like_the_cli(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "3")
    status = wsup.wait_ready(3)
    before = set(wsup.worker_pids().values())
    loads = _loads(wsup.port)
    try:
        wait_until(lambda: all(load.ok > 20 for load in loads), 20, 0.05, "load to be flowing")
        os.kill(status["supervisor"]["pid"], signal.SIGHUP)

        def replaced() -> bool:
            current = wsup.status()
            pids = {w["pid"] for w in current["workers"] if w["state"] == "ready"}
            return len(pids) == 3 and not pids & before and current["operation"] is None and not current["draining"]

        wait_until(replaced, 40, 0.1, "SIGHUP reload to finish")
    finally:
        _stop_and_check(loads)


def test_second_reload_is_refused_while_one_runs(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2", "--ws-drain-window", "3")
    wsup.wait_ready(2)

    async def scenario() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        stop = asyncio.Event()
        clients = [ReconnectingClient(f"{wsup.ws_url}/ws") for _ in range(20)]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await asyncio.to_thread(wait_until, lambda: all(c.pids for c in clients), 30, 0.05, "all connected")
            first = asyncio.create_task(asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name))
            await asyncio.to_thread(
                wait_until, lambda: wsup.status()["operation"] == "reload", 20, 0.05, "the reload to start"
            )
            second = await asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name)
            return await first, second
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    first, second = asyncio.run(scenario())
    assert first.returncode == 0, first.stderr
    assert second.returncode == 1
    assert "a reload is in progress" in second.stderr


def test_scale_up_and_down_under_load(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    wsup.wait_ready(2)
    loads = _loads(wsup.port)
    try:
        wait_until(lambda: all(load.ok > 20 for load in loads), 20, 0.05, "load to be flowing")
        for count in (4, 1, 3):
            result = wsup.cli("scale", str(count), "--name", wsup.name)
            assert result.returncode == 0, result.stderr
            status = wsup.wait_ready(count)
            assert [w["slot"] for w in status["workers"]] == list(range(count))
            assert len(status["balance"]["weights"]) in (0, count)
    finally:
        _stop_and_check(loads)
    bad = wsup.cli("scale", "0x", "--name", wsup.name)
    assert bad.returncode == 2 and "scale N must be a positive whole number or 'max', got '0x'" in bad.stderr, (
        bad.stderr
    )


def test_restart_replaces_everything(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    wsup.wait_ready(2)
    before = set(wsup.worker_pids().values())
    result = wsup.cli("restart", "--name", wsup.name)
    assert result.returncode == 0, result.stderr
    after = set(wsup.wait_ready(2) and wsup.worker_pids().values())
    assert len(after) == 2 and not after & before
    assert http_get(wsup.port)[0] == 200

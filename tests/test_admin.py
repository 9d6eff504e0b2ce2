"""The admin endpoint against a real instance: /metrics parsed by prometheus_client's own parser, /health, /status,
the token, and what hostile requests get."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import close_all, http_get, open_websockets
from tests.wsup_harness import Instance, free_port, run_cli, wait_until

TOKEN = "s3cret-token-for-tests"


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name of each sample -> its labels -> value."""
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_slot(samples: dict[tuple[tuple[str, str], ...], float], **match: str) -> dict[str, float]:
    result = {}
    for labels, value in samples.items():
        named = dict(labels)
        if all(named.get(k) == v for k, v in match.items()):
            result[named["slot"]] = value
    return result


def test_metrics_match_status_and_survive_a_reload(start_wsup: Callable[..., Instance]) -> None:
    admin = free_port()
    wsup = start_wsup("app:asgi", "-i", "2", "--admin", str(admin))
    wsup.wait_ready(2)
    assert wsup.status()["admin"] == f"http://127.0.0.1:{admin}"

    async def scenario() -> None:
        clients = await open_websockets(f"{wsup.ws_url}/ws", 100)
        try:

            def settled() -> bool:
                ws = by_slot(scrape(admin)["wsup_connections"], kind="websocket")
                status = wsup.status()
                return sum(ws.values()) == 100 and status["totals"]["connections"]["websocket"] == 100

            await asyncio.to_thread(wait_until, settled, 30, 0.1, "100 WebSockets in /metrics and status")
            metrics = scrape(admin)
            status = wsup.status()
            per_slot = by_slot(metrics["wsup_connections"], kind="websocket")
            assert per_slot == {str(w["slot"]): w["connections"]["websocket"] for w in status["workers"]}
            # No stream of short connections: the queue every worker takes from gets nothing.
            assert metrics["wsup_steering_shared_queue_weight"] == {(): status["balance"]["shared_weight"]} == {(): 0}
        finally:
            await close_all(clients)

    asyncio.run(scenario())
    for _ in range(30):
        assert http_get(wsup.port, "/hello")[0] == 200
    wait_until(lambda: sum(by_slot(scrape(admin)["wsup_requests_total"]).values()) >= 30, 10, 0.1, "30 requests")
    before = scrape(admin)

    async def reload_with_clients() -> None:
        # Ten clients held through the reload: each gets 1012 (Service Restart) from its draining worker.
        clients = await open_websockets(f"{wsup.ws_url}/ws", 10)
        try:
            result = await asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name)
            assert result.returncode == 0, result.stderr
        finally:
            await close_all(clients)

    asyncio.run(reload_with_clients())
    closes = "wsup_websocket_closes_total"
    wait_until(lambda: scrape(admin)[closes].get((("code", "1012"),)) == 10.0, 15, 0.1, "10 closes with 1012")
    after = scrape(admin)
    assert after[closes][(("code", "1000"),)] == 100.0  # the first hundred clients closed normally
    for name in ("wsup_requests_total", "wsup_connections_accepted_total", "wsup_worker_cpu_seconds_total"):
        for slot, value in by_slot(before[name]).items():
            assert by_slot(after[name])[slot] >= value, f"{name} of slot {slot} went back: {value} -> {after[name]}"
    assert sum(by_slot(after["wsup_websocket_sessions_total"]).values()) == 110
    assert by_slot(after["wsup_worker_restarts_total"], reason="reload") == {"0": 1.0, "1": 1.0}
    assert after["wsup_reloads_total"][(("result", "ok"),)] == 1.0
    assert after["wsup_workers"][(("state", "ready"),)] == 2.0

    status, body = http_get(admin, "/health")
    assert status == 200 and orjson.loads(body)["ready"] == 2
    status, body = http_get(admin, "/status")
    document: dict[str, Any] = orjson.loads(body)
    assert status == 200 and document["name"] == wsup.name and len(document["workers"]) == 2


def test_token_and_hostile_requests(start_wsup: Callable[..., Instance], wsup_env: dict[str, str]) -> None:
    admin = free_port()
    wsup_env["WSUP_ADMIN_TOKEN"] = TOKEN  # the way the README recommends: not on the command line
    wsup = start_wsup("app:asgi", "--admin", f"127.0.0.1:{admin}")
    del wsup_env["WSUP_ADMIN_TOKEN"]
    status = wsup.wait_ready(1)
    worker_env = Path(f"/proc/{status['workers'][0]['pid']}/environ").read_bytes()
    assert b"WSUP_ADMIN_TOKEN" not in worker_env and f"WSUP_ADMIN_URL=http://127.0.0.1:{admin}".encode() in worker_env
    assert http_get(admin, "/metrics")[0] == 401
    assert http_get(admin, f"/health?token={TOKEN}x")[0] == 401
    assert http_get(admin, f"/health?token={TOKEN}")[0] == 200
    assert _raw(admin, f"GET /metrics HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert _raw(admin, "POST /health HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert _raw(admin, "garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = "GET / HTTP/1.1\r\n" + "X-Pad: " + "a" * 20000 + "\r\n\r\n"
    assert _raw(admin, huge).startswith(b"HTTP/1.1 431")
    assert http_get(admin, f"/nowhere?token={TOKEN}")[0] == 404
    assert http_get(admin, f"/health?token={TOKEN}")[0] == 200  # still serving after all that


def _raw(port: int, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admin", "0.0.0.0:9"], "reachable from other hosts"),
        (["--admin", "127.0.0.1:9", "--admin-token", "short"], "at least 16 characters"),
        (["--admin", "::1:9"], "in brackets"),
        (["--admin", "70000"], "between 0 and 65535"),
    ],
)
def test_admin_options_are_checked(wsup_env: dict[str, str], args: list[str], message: str) -> None:
    result = run_cli("start", "app:asgi", "--port", "0", *args, env=wsup_env)
    assert result.returncode == 2 and message in result.stderr and result.stderr.startswith("wsup: ")

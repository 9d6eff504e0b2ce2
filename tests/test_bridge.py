"""The bus bridged through a real redis-server between wsup instances on 127.0.0.2 and 127.0.0.3 (two "hosts"):
delivery across hosts in order and exactly once, `wsup publish` across hosts, a Redis restart, and secrets kept
out of `status --json` and the logs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.multihost import RedisServer, redis_server
from tests.wsup_harness import Instance, free_port, run_cli, wait_until

APP = "tests.apps.bus_app:asgi"
SECRET = "s3cret-Bridge-pw"
PREFIX = "wsup:t:"


def start_host(
    start_wsup: Callable[..., Instance], name: str, address: str, port: int, bridge: str, *extra: str
) -> Instance:
    instance: Instance = start_wsup(
        APP, "--host", address, "--bridge", bridge, "--bridge-prefix", PREFIX, *extra, name=name, port=port
    )
    return instance


def bridge_of(instance: Instance) -> dict[str, Any]:
    bridge: dict[str, Any] = instance.status()["bridge"]
    return bridge


def connected(instance: Instance, channels: int = 0) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        bridge = bridge_of(instance)
        return bridge if bridge["state"] == "connected" and bridge["channels"] >= channels else None

    return wait_until(ok, 30, 0.1, f"bridge of {instance.name} connected with {channels} channels")


async def client(address: str, port: int) -> ClientConnection:
    ws = await connect(f"ws://{address}:{port}/ws", open_timeout=30, ping_interval=None, max_queue=None)
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "hello"
    return ws


async def command(ws: ClientConnection, **op: Any) -> dict[str, Any]:
    """Send one command and return its reply; bus messages that arrive first are kept on ``ws.pending``."""
    await ws.send(orjson.dumps(op).decode())
    while True:
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        if message.get("type") in ("joined", "left", "published", "error"):
            return message
        ws.pending.append(message)  # type: ignore[attr-defined]


async def receive(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = list(ws.pending)  # type: ignore[attr-defined]
    ws.pending.clear()  # type: ignore[attr-defined]
    while len(got) < count:
        got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 30)))
    return got


def publish_marker(instance: Instance) -> None:
    result = instance.cli("publish", "--name", instance.name, "room", f'{{"type": "marker", "by": "{instance.name}"}}')
    assert result.returncode == 0, result.stderr


async def only_markers(ws: ClientConnection) -> None:
    """After the 400, each client gets the two `wsup publish` markers, one per host, and nothing else."""
    got = [orjson.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(2)]
    assert sorted(m.get("by", "?") for m in got) == ["h1", "h2"], got


def test_cross_host_delivery_in_order_once_with_secrets_kept(
    start_wsup: Callable[..., Instance], wsup_env: dict[str, str]
) -> None:
    port = free_port()
    with redis_server(password=SECRET) as redis:
        # Host 1 has the password in its URL, host 2 gets it from the environment.
        h1 = start_host(start_wsup, "h1", "127.0.0.2", port, f"redis://:{SECRET}@127.0.0.1:{redis.port}/0")
        wsup_env["WSUP_BRIDGE_PASSWORD"] = SECRET
        h2 = start_host(start_wsup, "h2", "127.0.0.3", port, redis.url)
        h1.wait_ready(1)
        h2.wait_ready(1)
        connected(h1)
        connected(h2)

        async def scenario() -> None:
            a, b = await client("127.0.0.2", port), await client("127.0.0.3", port)
            for ws in (a, b):
                ws.pending = []  # type: ignore[attr-defined]
                assert (await command(ws, op="join", channels=["room"]))["type"] == "joined"
            await asyncio.to_thread(connected, h1, 1)
            await asyncio.to_thread(connected, h2, 1)
            # 200 from each host, published at once: each client gets all 400, each publisher's in its order.
            replies = await asyncio.gather(
                command(a, op="publish", channel="room", count=200, tag="a"),
                command(b, op="publish", channel="room", count=200, tag="b"),
            )
            assert [r["sent"] for r in replies] == [200, 200]
            for ws in (a, b):
                got = await receive(ws, 400)
                for tag in ("a", "b"):
                    assert [m["n"] for m in got if m["tag"] == tag] == list(range(200))
            # `wsup publish` on each host reaches the clients of both, once; nothing is delivered twice.
            await asyncio.to_thread(publish_marker, h1)
            await asyncio.to_thread(publish_marker, h2)
            await only_markers(a)
            await only_markers(b)
            await a.close()
            await b.close()

        asyncio.run(scenario())
        for host in (h1, h2):
            bridge = bridge_of(host)
            assert bridge["messages_out"] >= 201 and bridge["messages_in"] >= 201, bridge
            assert bridge["dropped"] == 0 and bridge["malformed_in"] == 0, bridge
            # The host's own messages came back from Redis and were dropped there, not delivered twice.
            assert bridge["looped_back"] >= 200, bridge
            assert host.status()["totals"]["bus"].get("lost", 0) == 0
        # Interest follows local members: once the clients left, neither host is subscribed to "room".
        wait_until(lambda: bridge_of(h1)["channels"] == 0 and bridge_of(h2)["channels"] == 0, 30, 0.1, "unsubscribed")
        for host in (h1, h2):
            document = host.cli("status", "--name", host.name, "--json").stdout
            assert SECRET not in document
            assert "127.0.0.1" in orjson.loads(document)["bridge"]["address"]
            assert SECRET not in host.log()


def test_wrong_password_is_reported_without_the_password(
    start_wsup: Callable[..., Instance], wsup_env: dict[str, str]
) -> None:
    with redis_server(password=SECRET) as redis:
        wrong = "not-the-" + SECRET
        h1 = start_host(start_wsup, "h1", "127.0.0.2", free_port(), f"redis://:{wrong}@127.0.0.1:{redis.port}/0")
        h1.wait_ready(1)
        bridge = wait_until(lambda: (b := bridge_of(h1))["connect_failures"] >= 2 and b, 30, 0.1, "failures")
        assert bridge["state"] != "connected" and bridge["last_error"], bridge
        assert ":***@" in bridge["address"]
        document = h1.cli("status", "--name", h1.name, "--json").stdout
        assert wrong not in document and wrong not in h1.log()


def test_redis_restart_keeps_local_delivery_and_resumes_across_hosts(start_wsup: Callable[..., Instance]) -> None:
    port = free_port()
    redis = RedisServer().start()
    try:
        h1 = start_host(start_wsup, "h1", "127.0.0.2", port, redis.url)
        h2 = start_host(start_wsup, "h2", "127.0.0.3", port, redis.url)
        h1.wait_ready(1)
        h2.wait_ready(1)

        async def scenario() -> None:
            a, local = await client("127.0.0.2", port), await client("127.0.0.2", port)
            b = await client("127.0.0.3", port)
            for ws in (a, local, b):
                ws.pending = []  # type: ignore[attr-defined]
                await command(ws, op="join", channels=["room"])
            await asyncio.to_thread(connected, h1, 1)
            await asyncio.to_thread(connected, h2, 1)

            redis.stop()
            await asyncio.to_thread(wait_until, lambda: bridge_of(h1)["state"] != "connected", 30, 0.1, "Redis gone")
            # Redis is gone: host 1's own clients still get host 1's messages; the relay's losses are counted.
            await command(a, op="publish", channel="room", count=50, tag="away")
            assert [m["n"] for m in await receive(local, 50)] == list(range(50))
            away = bridge_of(h1)
            assert away["dropped_by_reason"]["disconnected"] >= 50, away

            redis.start()
            await asyncio.to_thread(connected, h1, 1)
            await asyncio.to_thread(connected, h2, 1)
            await command(a, op="publish", channel="room", count=20, tag="back")
            got = [m for m in await receive(b, 20) if m.get("tag") == "back"]
            assert [m["n"] for m in got] == list(range(20))
            assert [m["n"] for m in await receive(local, 20)] == list(range(20))

            # A Redis that freezes without closing its connections: local delivery does not wait for it, and the
            # bridges' pings find it silent and leave it behind until it answers again.
            assert redis.proc is not None
            redis.proc.send_signal(signal.SIGSTOP)
            try:
                await command(a, op="publish", channel="room", count=50, tag="frozen")
                assert [m["n"] for m in await receive(local, 50)] == list(range(50))
                await asyncio.to_thread(
                    wait_until, lambda: bridge_of(h1)["state"] != "connected", 60, 0.2, "frozen Redis noticed"
                )
            finally:
                redis.proc.send_signal(signal.SIGCONT)
            await asyncio.to_thread(connected, h1, 1)
            for ws in (a, local, b):
                await ws.close()

        asyncio.run(scenario())
        assert bridge_of(h1)["reconnects"] >= 1 and bridge_of(h2)["reconnects"] >= 1
        assert h1.status()["supervisor"]["errors"]["total"] == 0
    finally:
        redis.stop()


def test_a_bad_bridge_url_is_a_one_line_error(wsup_env: dict[str, str]) -> None:
    result = run_cli("start", APP, "--bridge", "redis://h:99999", env=wsup_env, timeout=30)
    assert result.returncode != 0
    assert result.stderr.startswith("wsup: --bridge") and result.stderr.count("\n") == 1, result.stderr

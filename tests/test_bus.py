"""Integration tests of the broadcast bus: real `wsup` processes, real WebSocket clients on different workers.

The test app (tests/apps/bus_app.py) lets each client drive its own WebSocket: join, leave, publish. Every wait has
a deadline and no assertion depends on timing: the machine is small and shared.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import struct
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import psutil
import zmq
from websockets.asyncio.client import ClientConnection, connect

from tests.raw_websocket import TEXT, send_frame, upgrade_tail
from tests.wsup_harness import APPS_DIR, Instance, eventually, wait_until

BUS_APP = ("bus_app:asgi", "--app-dir", str(APPS_DIR))
REPLIES = {"joined", "left", "published", "error", "ready"}


class Client:
    """One WebSocket on the test app: commands get their reply; everything else is a received broadcast."""

    def __init__(self, ws: ClientConnection, pid: int) -> None:
        self.ws = ws
        self.pid = pid
        self.received: list[Any] = []
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Client:
        ws = await connect(url, open_timeout=30, ping_interval=None, max_queue=None, max_size=None)
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        return cls(ws, int(hello["pid"]))

    async def _read(self) -> None:
        async for frame in self.ws:
            value: Any = frame
            if isinstance(frame, str):
                try:
                    value = orjson.loads(frame)
                except orjson.JSONDecodeError:
                    pass
            if isinstance(value, dict) and value.get("type") in REPLIES:
                self._replies.put_nowait(value)
            else:
                self.received.append(value)

    async def cmd(self, **command: Any) -> dict[str, Any]:
        await self.ws.send(orjson.dumps(command).decode())
        return await self.reply()

    async def reply(self) -> dict[str, Any]:
        return await asyncio.wait_for(self._replies.get(), 30)

    def tagged(self, tag: str) -> list[dict[str, Any]]:
        return [m for m in self.received if isinstance(m, dict) and m.get("tag") == tag]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def open_clients(url: str, count: int) -> list[Client]:
    return list(await asyncio.gather(*(Client.open(url) for _ in range(count))))


async def clients_on_every_worker(url: str, workers: int, at_least: int) -> list[Client]:
    """At least ``at_least`` clients, and more until every worker holds one (balancing is the kernel's and the
    supervisor's business, not this test's)."""
    clients = await open_clients(url, at_least)
    while len({c.pid for c in clients}) < workers:
        assert len(clients) < at_least + 100, f"no client reached every worker: {sorted({c.pid for c in clients})}"
        clients += await open_clients(url, workers)
    return clients


async def close_clients(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def bus_totals(wsup: Instance) -> dict[str, int]:
    totals: dict[str, int] = wsup.status()["totals"]["bus"]
    return totals


def test_cross_worker_delivery_keeps_each_publishers_order(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "4")
    wsup.wait_ready(4)

    async def scenario() -> None:
        clients = await clients_on_every_worker(f"{wsup.ws_url}/ws", 4, 16)
        wrapped = await Client.open(f"{wsup.ws_url}/wrapped")  # behind a send-wrapping middleware: the fallback
        inproc = await Client.open(f"{wsup.ws_url}/inproc?channel=room")  # an in-process async iterator
        try:
            joins = await asyncio.gather(*(c.cmd(op="join", channels=["room"]) for c in [*clients, wrapped]))
            assert [j["fast"] for j in joins] == [True] * len(clients) + [False]
            assert (await inproc.reply())["type"] == "ready"
            publishers = {c.pid: c for c in clients}
            first, second = list(publishers.values())[:2]
            await asyncio.gather(
                first.cmd(op="publish", channel="room", tag="a", count=150),
                second.cmd(op="publish", channel="room", tag="b", count=150),
            )
            receivers = [*clients, wrapped]
            await eventually(
                lambda: all(len(c.received) == 300 for c in receivers),
                "300 messages everywhere",
                detail=lambda: [(c.pid, len(c.received)) for c in receivers] + [bus_totals(wsup)],
            )
            await eventually(lambda: len(inproc.received) == 300, "300 messages in the in-process subscriber")
            for client in receivers:
                for tag, src in (("a", first.pid), ("b", second.pid)):
                    got = client.tagged(tag)
                    assert [m["n"] for m in got] == list(range(150)), f"order broken on worker {client.pid}"
                    assert {m["src"] for m in got} == {src}
            for tag in ("a", "b"):
                assert [m["data"]["n"] for m in inproc.received if m["data"]["tag"] == tag] == list(range(150))
            totals = await asyncio.to_thread(bus_totals, wsup)
            assert totals["published"] == 300 and totals["lost"] == 0 and totals["dropped_slow"] == 0
        finally:
            await close_clients([*clients, wrapped, inproc])

    asyncio.run(scenario())


def test_publish_can_exclude_the_sender(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "2")
    wsup.wait_ready(2)

    async def scenario() -> None:
        clients = await clients_on_every_worker(f"{wsup.ws_url}/ws", 2, 6)
        try:
            await asyncio.gather(*(c.cmd(op="join", channels=["room"]) for c in clients))
            per_worker = collections.Counter(c.pid for c in clients)
            sender = next(c for c in clients if per_worker[c.pid] >= 2)  # someone on its worker must still get it
            clients.remove(sender)
            clients.insert(0, sender)
            await sender.cmd(op="publish", channel="room", tag="others-only", exclude_self=True)
            await sender.cmd(op="publish", channel="room", tag="everyone")
            await eventually(lambda: all(c.tagged("everyone") for c in clients), "the second message everywhere")
            # Same publisher, same channel: order is kept, so a sender that got the second has not got the first.
            assert sender.tagged("others-only") == []
            assert all(len(c.tagged("others-only")) == 1 for c in clients[1:])
            same_worker = [c for c in clients[1:] if c.pid == sender.pid]
            assert same_worker, "another client on the sender's worker must still get it"
        finally:
            await close_clients(clients)

    asyncio.run(scenario())


def test_many_clients_joining_a_new_channel_at_once_all_receive(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "4")
    wsup.wait_ready(4)

    async def scenario() -> None:
        clients = await clients_on_every_worker(f"{wsup.ws_url}/ws", 4, 200)
        try:
            channel = f"fresh-{uuid.uuid4().hex}"

            async def join_then_publish(client: Client, index: int) -> None:
                await client.cmd(op="join", channels=[channel])
                # Published the moment join returned, by this client's own worker: it must come back to it.
                await client.cmd(op="publish", channel=channel, tag=f"own-{index}")

            await asyncio.gather(*(join_then_publish(c, i) for i, c in enumerate(clients)))
            await clients[0].cmd(op="publish", channel=channel, tag="after-all-joined")
            await eventually(lambda: all(c.tagged("after-all-joined") for c in clients), "the last message")
            missing = [i for i, c in enumerate(clients) if not c.tagged(f"own-{i}")]
            assert missing == [], f"{len(missing)} clients missed a message published right after they joined"
            # And every message published after every join returned reached everyone: none lost anywhere.
            assert (await asyncio.to_thread(bus_totals, wsup))["lost"] == 0
        finally:
            await close_clients(clients)

    asyncio.run(scenario())


def test_leave_and_rejoin_races_end_subscribed(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "4")
    wsup.wait_ready(4)

    async def scenario() -> None:
        clients = await open_clients(f"{wsup.ws_url}/ws", 40)
        try:
            channel = f"churn-{uuid.uuid4().hex}"

            async def churn(client: Client) -> None:
                for _ in range(8):
                    await client.cmd(op="join", channels=[channel])
                    await client.cmd(op="leave", channels=[channel])
                await client.cmd(op="join", channels=[channel])

            publisher = clients[0]
            # Messages published during the churn may or may not arrive (at-most-once); afterwards, all must.
            await asyncio.gather(
                *(churn(c) for c in clients), publisher.cmd(op="publish", channel=channel, tag="churn", count=50)
            )
            await publisher.cmd(op="publish", channel=channel, tag="settled")
            await eventually(lambda: all(c.tagged("settled") for c in clients), "the settled message everywhere")
            status = await asyncio.to_thread(wsup.status)
            assert sum(w["bus"]["members"] for w in status["workers"]) == 40
        finally:
            await close_clients(clients)

    asyncio.run(scenario())


def _stalled_websocket(port: int, path: str, command: dict[str, Any]) -> tuple[socket.socket, int]:
    """A WebSocket client that sends one command, reads its reply, then never reads again (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + upgrade_tail())
    data = b""
    while b'"hello"' not in data:
        data += sock.recv(4096)
    pid = int(data.split(b'"pid":')[1].split(b"}")[0])
    send_frame(sock, TEXT, orjson.dumps(command))
    while b'"joined"' not in data:
        data += sock.recv(4096)
    return sock, pid


def _all_got(clients: list[Client], tag: str, count: int) -> bool:
    return all(len(c.tagged(tag)) == count for c in clients)


def _stall_scenario(wsup: Instance, policy_counter: str) -> tuple[list[Client], dict[str, Any]]:
    async def scenario() -> tuple[list[Client], dict[str, Any]]:
        stalled, _ = await asyncio.to_thread(_stalled_websocket, wsup.port, "/ws", {"op": "join", "channels": ["room"]})
        healthy = await open_clients(f"{wsup.ws_url}/ws", 3)
        try:
            await asyncio.gather(*(c.cmd(op="join", channels=["room"]) for c in healthy))
            published = 0
            deadline = time.monotonic() + 25
            while True:  # 16 KiB messages until the stalled client's backlog overflows
                await healthy[0].cmd(op="publish", channel="room", tag="flood", count=25, pad=16384)
                published += 25
                await eventually(partial(_all_got, healthy, "flood", published), "healthy clients to keep up")
                totals = await asyncio.to_thread(bus_totals, wsup)
                if totals[policy_counter]:
                    break
                assert time.monotonic() < deadline, f"no {policy_counter} after {published} messages: {totals}"
            for client in healthy:
                assert [m["n"] for m in client.tagged("flood")] == list(range(25)) * (published // 25)
            return healthy, await asyncio.to_thread(wsup.status)
        finally:
            await close_clients(healthy)
            stalled.close()

    return asyncio.run(scenario())


def test_stalled_client_drops_oldest_without_delaying_others(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "1", "--bus-queue", "8")
    wsup.wait_ready(1)
    _, status = _stall_scenario(wsup, "dropped_slow")
    worker = status["workers"][0]
    assert worker["bus"]["dropped_slow"] > 0 and worker["bus"]["disconnected_slow"] == 0
    assert worker["connections"]["websocket"] == 4  # the stalled client is kept, its oldest messages dropped
    shown = wsup.cli("status", "--name", wsup.name)
    assert f"{worker['bus']['dropped_slow']} slow" in shown.stdout, shown.stdout


def test_stalled_client_is_disconnected_under_that_policy(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "1", "--bus-queue", "8", "--bus-policy", "disconnect")
    wsup.wait_ready(1)
    _, status = _stall_scenario(wsup, "disconnected_slow")
    assert status["workers"][0]["bus"]["disconnected_slow"] == 1
    assert status["workers"][0]["bus"]["dropped_slow"] == 0
    # Its connection is closed (aborted if it never reads the close frame), freeing its buffers.
    wait_until(lambda: wsup.status()["totals"]["connections"]["websocket"] == 0, 15, 0.1, "the stalled client gone")


def test_wsup_publish_from_the_command_line(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "4", "--bus-max-bytes", "1000")
    wsup.wait_ready(4)

    async def scenario() -> None:
        clients = await clients_on_every_worker(f"{wsup.ws_url}/ws", 4, 12)
        try:
            await asyncio.gather(*(c.cmd(op="join", channels=["news"]) for c in clients))
            result = await asyncio.to_thread(wsup.cli, "publish", "news", "plain text", "--name", wsup.name)
            assert result.returncode == 0, result.stderr
            assert "published 10 bytes to 'news'" in result.stdout
            result = await asyncio.to_thread(wsup.cli, "publish", "news", '{"tag": "cli", "n": 1}', "--json")
            assert result.returncode == 0, result.stderr
            await eventually(lambda: all(len(c.received) == 2 for c in clients), "both messages everywhere")
            assert all(c.received == ["plain text", {"tag": "cli", "n": 1}] for c in clients)

            bad_json = await asyncio.to_thread(wsup.cli, "publish", "news", "{oops", "--json")
            assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
            too_large = await asyncio.to_thread(wsup.cli, "publish", "news", "x" * 1001)
            assert too_large.returncode == 2, too_large
            assert "exceeds the bus limit of 1000 bytes" in too_large.stderr
            bad_channel = await asyncio.to_thread(wsup.cli, "publish", "\x01internal", "x")
            assert bad_channel.returncode == 1 and "reserved" in bad_channel.stderr
            nobody = await asyncio.to_thread(wsup.cli, "publish", "news", "x", "--name", "nobody-here")
            assert nobody.returncode == 3
            assert all(len(c.received) == 2 for c in clients)  # nothing refused was delivered
        finally:
            await close_clients(clients)

    asyncio.run(scenario())


def test_publish_over_the_limit_is_refused_in_a_worker(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "1", "--bus-max-bytes", "1000")
    wsup.wait_ready(1)

    async def scenario() -> None:
        client = await Client.open(f"{wsup.ws_url}/ws")
        try:
            await client.cmd(op="join", channels=["room"])
            reply = await client.cmd(op="publish", channel="room", size=1001)
            assert reply["kind"] == "MessageTooLargeError"
            assert reply["error"] == "message of 1001 bytes exceeds the bus limit of 1000 bytes (--bus-max-bytes)"
            assert (await client.cmd(op="publish", channel="room", size=1000))["sent"] == 1
            await eventually(lambda: client.received == ["x" * 1000], "the message at the limit")
            assert (await asyncio.to_thread(bus_totals, wsup))["too_large"] == 1
        finally:
            await client.close()

    asyncio.run(scenario())


def test_malformed_bus_messages_are_counted_and_dropped(start_wsup: Callable[..., Instance], run_dir: Any) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "2")
    pids = {w["pid"] for w in wsup.wait_ready(2)["workers"]}

    async def scenario() -> None:
        clients = await open_clients(f"{wsup.ws_url}/ws", 4)
        context = zmq.Context()
        rogue = context.socket(zmq.PUB)
        rogue.setsockopt(zmq.LINGER, 0)
        try:
            await asyncio.gather(*(c.cmd(op="join", channels=["room"]) for c in clients))
            rogue.connect(f"ipc://{run_dir}/{wsup.name}/bus-in")
            garbage = [
                [b"room\x00"],  # one frame
                [b"room\x00", b"short", b"x"],  # bad header
                [b"room\x00", struct.pack("!BBHIQQ", 9, 1, 0, 1, 1, 0), b"x"],  # unknown wire version
                [b"room\x00", struct.pack("!BBHIQQ", 1, 77, 0, 1, 1, 0), b"x"],  # unknown kind
                [b"room\x00", struct.pack("!BBHIQQ", 1, 1, 0, 1, 1, 0), b"\xff\xfe"],  # text that is not UTF-8
            ]

            def counted() -> bool:
                # A fresh PUB drops what it sends before it hears the proxy's subscription: resend until counted.
                for frames in garbage:
                    rogue.send_multipart(frames)
                return bus_totals(wsup)["malformed"] >= 2 * len(garbage)

            await asyncio.to_thread(wait_until, counted, 20, 0.2, "malformed messages to be counted")
            await clients[0].cmd(op="publish", channel="room", tag="still-works")
            await eventually(lambda: all(c.tagged("still-works") for c in clients), "a valid message after garbage")
            assert all(len(c.received) == 1 for c in clients)
            status = await asyncio.to_thread(wsup.status)
            assert {w["pid"] for w in status["workers"]} == pids  # no worker died
        finally:
            rogue.close()
            context.term()
            await close_clients(clients)

    asyncio.run(scenario())


def test_replaced_worker_joins_and_receives(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "2")
    before = wsup.wait_ready(2)
    victim = next(w["pid"] for w in before["workers"] if w["slot"] == 1)
    os.kill(victim, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(victim)] if psutil.pid_exists(victim) else [], timeout=10)

    def replaced() -> int | None:
        row = next(w for w in wsup.status()["workers"] if w["slot"] == 1)
        return int(row["pid"]) if row["state"] == "ready" and row["pid"] not in (None, victim) else None

    new_pid = wait_until(replaced, 20, 0.1, "slot 1 replaced")

    expected = set(wsup.worker_pids().values())

    async def scenario() -> None:
        clients: list[Client] = []
        try:
            while {c.pid for c in clients} != expected or len(clients) < 4:
                clients.append(await Client.open(f"{wsup.ws_url}/ws"))
                assert len(clients) < 40, "the replacement worker gets no connections"
            await asyncio.gather(*(c.cmd(op="join", channels=["room"]) for c in clients))
            on_new = next(c for c in clients if c.pid == new_pid)
            on_old = next(c for c in clients if c.pid != new_pid)
            await on_old.cmd(op="publish", channel="room", tag="from-old")
            await on_new.cmd(op="publish", channel="room", tag="from-new")
            await eventually(
                lambda: all(c.tagged("from-old") and c.tagged("from-new") for c in clients), "both messages everywhere"
            )
        finally:
            await close_clients(clients)

    asyncio.run(scenario())

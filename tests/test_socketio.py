"""python-socketio on wsup: WsupManager over the bus and --balance ip-hash, with real Socket.IO clients.

Clients come from several addresses of 127.0.0.0/8 (each bound to its own), as browsers on different hosts would:
python-socketio's AsyncClient, and browser-like clients whose every HTTP request and WebSocket upgrade is a new TCP
connection. Every wait has a deadline; nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import socketio

from ipc import broadcast
from ipc.bus_counters import BusCounters
from ipc.bus_hub import LocalBus
from ipc.bus_wire import BusMessage, Kind
from ipc.socketio import ManagerStream, WsupManager, emit_message, emit_to_instance, valid_message
from tests.socketio_clients import BrowserClient, sio_client, source_address
from tests.wsup_harness import APPS_DIR, Instance, eventually, wait_until

SIO_APP = ("socketio_app:asgi", "--app-dir", str(APPS_DIR), "-i", "4", "--balance", "ip-hash")


# --- the manager's stream, without processes ----------------------------------------------------------------
def _message(seq: int) -> BusMessage:
    payload = orjson.dumps({"method": "emit", "seq": seq})
    return BusMessage("socketio", Kind.TEXT, 1, seq, 0, payload, payload.decode())


def test_the_manager_stream_keeps_what_a_client_backlog_would_drop() -> None:
    counters = BusCounters()
    stream = ManagerStream(1, 1000, counters)
    for seq in range(1, 901):  # far more than a client's default backlog of 256
        assert stream.deliver(_message(seq))
    assert [message.seq for message in stream.backlog] == list(range(1, 901))
    assert counters.manager_received == 900 and counters.manager_backlog_peak == 900
    assert counters.manager_dropped == 0 and counters.dropped_slow == 0


def test_the_manager_stream_counts_what_its_bound_drops() -> None:
    counters = BusCounters()
    stream = ManagerStream(1, 10, counters)
    for seq in range(1, 16):
        stream.deliver(_message(seq))
    assert [message.seq for message in stream.backlog] == list(range(6, 16))
    assert counters.manager_dropped == 5 and counters.manager_backlog_peak == 10


def test_emit_message_is_what_a_pubsub_manager_publishes() -> None:
    message = emit_message("said", ("a", 1), to="lobby")
    assert message["method"] == "emit" and message["data"] == ["a", 1] and message["room"] == "lobby"
    assert message["namespace"] == "/" and message["callback"] is None


@pytest.mark.parametrize(
    "message",
    [
        {"method": "emit", "event": "said", "data": ["x"], "namespace": "/", "room": None},
        {"method": "emit", "event": "said", "data": ["x"], "room": ["a", "b"], "callback": ["a", "/", 3]},
        {"method": "enter_room", "sid": "s", "room": "r", "namespace": "/"},
        {"method": "callback", "host_id": "h", "sid": "s", "namespace": "/", "id": 1, "args": []},
        emit_message("said", {"text": "hi"}, to="lobby"),
    ],
)
def test_valid_manager_messages(message: dict[str, Any]) -> None:
    assert valid_message(message)


@pytest.mark.parametrize(
    "message",
    [
        [],
        {"method": "emit"},
        {"method": "nope"},
        {"method": "emit", "event": "said", "data": "not a list"},
        {"method": "emit", "event": "said", "data": [], "callback": ["a", "/"]},
        {"method": "emit", "event": "said", "data": [{}, 7], "binary": True},
        {"method": "enter_room", "sid": 1, "room": "r"},
        {"method": "emit", "event": "said", "data": [], "room": ["a", {"b": 1}]},
        {"method": "emit", "event": "said", "data": [], "callback": [None, "/", 1]},
        {"method": "callback", "host_id": "h", "sid": "s", "id": "1", "args": []},
    ],
)
def test_invalid_manager_messages(message: object) -> None:
    assert not valid_message(message)


def test_outside_wsup_the_manager_is_local_and_counts_malformed_messages() -> None:
    async def scenario() -> None:
        bus = LocalBus()
        broadcast.install(bus)
        manager = WsupManager()
        server = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
        try:
            await manager.start()  # subscribes on the process's own bus
            assert manager.server is server
            for garbage in ("not json", '{"method": "emit"}', b"\xff binary"):
                await broadcast.publish("socketio", garbage)
            await eventually(lambda: bus.counters.manager_malformed == 3, "three malformed messages counted")
            assert bus.counters.manager_received == 3 and bus.counters.manager_dropped == 0
        finally:
            manager.thread.cancel()
            broadcast.install(None)

    asyncio.run(scenario())


# --- real instances -----------------------------------------------------------------------------------------
def _start(start_wsup: Callable[..., Instance], *args: str) -> Instance:
    instance = start_wsup(*SIO_APP, *args)
    status = instance.wait_ready(4, timeout=60)
    assert status["balance"]["mode"] == "ip-hash"
    assert sorted(status["balance"]["buckets"]) == [64, 64, 64, 64]
    return instance


class Recorder:
    """An AsyncClient's view: the worker that welcomed it and every ``said`` line it received, in order."""

    def __init__(self, client: socketio.AsyncClient) -> None:
        self.client = client
        self.worker = 0
        self.welcomes = 0
        self.lines: list[str] = []
        client.on("welcome", self._welcome)
        client.on("said", lambda line: self.lines.append(line["text"]))
        client.on("question", lambda data: {"answer": "pong", "asked_by": data["from"]})

    def _welcome(self, data: dict[str, Any]) -> None:
        self.worker = data["worker"]
        self.welcomes += 1


@contextlib.asynccontextmanager
async def recorders(url: str, sources: list[str], **options: Any) -> AsyncIterator[list[Recorder]]:
    async with contextlib.AsyncExitStack() as stack:
        made = []
        for source in sources:
            client, _ = await stack.enter_async_context(sio_client(source, **options))
            made.append(Recorder(client))
        await asyncio.gather(*(r.client.connect(url, wait_timeout=20) for r in made))
        await eventually(lambda: all(r.worker for r in made), "every welcome", 20)
        yield made


def test_clients_from_many_addresses_connect_and_room_emits_reach_every_worker(
    start_wsup: Callable[..., Instance],
) -> None:
    instance = _start(start_wsup)

    async def scenario() -> None:
        browsers = [BrowserClient(instance.url, source_address(i)) for i in range(24)]
        try:
            # Polling handshake, then the upgrade on a new TCP connection: only the worker holding the session
            # accepts it, so every step must land there.
            await asyncio.gather(*(browser.connect() for browser in browsers))
            for browser in browsers:
                await browser.emit("join", "lobby")
            async with recorders(instance.url, [source_address(i) for i in range(24, 40)]) as clients:
                for recorder in clients:
                    assert (await recorder.client.call("join", "lobby", timeout=20))["room"] == "lobby"
                assert len({r.worker for r in clients}) >= 2
                for browser in browsers:  # each browser saw its own join: its room membership is live
                    await browser.next_event("joined", timeout=20)
                await clients[0].client.call("say", {"room": "lobby", "text": "hello"}, timeout=20)
                await clients[0].client.call("burst", {"room": "lobby", "tag": "b", "count": 50}, timeout=20)
                expected = ["hello"] + [f"b:{n}" for n in range(50)]
                await eventually(lambda: all(r.lines == expected for r in clients), "every line, once, in order", 20)
                for browser in browsers:
                    texts = [(await browser.next_event("said", timeout=20))[1]["text"] for _ in expected]
                    assert texts == expected
        finally:
            await asyncio.gather(*(browser.close() for browser in browsers))

    asyncio.run(scenario())
    bus = instance.status()["totals"]["bus"]
    assert bus["manager_received"] > 0
    assert bus["manager_dropped"] == bus["manager_unsent"] == bus["lost"] == 0


def test_disconnect_rooms_acks_and_close_room_across_workers(
    start_wsup: Callable[..., Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = _start(start_wsup)
    monkeypatch.setenv("WSUP_RUN_DIR", instance.env["WSUP_RUN_DIR"])

    async def scenario() -> None:
        async with recorders(instance.url, [source_address(i) for i in range(12)]) as clients:
            by_worker = collections.defaultdict(list)
            for recorder in clients:
                by_worker[recorder.worker].append(recorder)
            assert len(by_worker) >= 2, "12 addresses all hashed to one worker"
            (first, *_), (second, *_) = list(by_worker.values())[:2]
            a, b = first.client, second.client
            # enter_room for a client served by another worker
            await a.call("enter", {"sid": b.get_sid(), "room": "private"}, timeout=20)
            await a.call("say", {"room": "private", "text": "psst"}, timeout=20)
            await eventually(lambda: second.lines == ["psst"], "the private line", 20)
            # an emit with an ack, to a client on another worker: the answer comes back through the bus
            answer = await a.call("ask", b.get_sid(), timeout=20)
            assert answer == {"answer": "pong", "asked_by": first.worker}
            # close_room everywhere: a later line to the room reaches nobody. b joins lobby; a line sent there
            # after the private one arrives after it (one publisher, one channel: in order), so it proves absence.
            await b.call("join", "lobby", timeout=20)
            await a.call("close", "private", timeout=20)
            await a.call("say", {"room": "private", "text": "after close"}, timeout=20)
            await a.call("say", {"room": "lobby", "text": "marker"}, timeout=20)
            await eventually(lambda: "marker" in second.lines, "the marker", 20)
            assert "after close" not in second.lines
            # a write-only manager outside the instance (a script) reaches the room on every worker
            external = WsupManager(write_only=True, instance=instance.name)
            await external.emit("said", {"text": "from outside"}, room="lobby")
            await eventually(lambda: second.lines[-1:] == ["from outside"], "the outside line", 20)
            # disconnect a client served by another worker
            gone = asyncio.Event()
            b.on("disconnect", gone.set)
            await a.call("kick", b.get_sid(), timeout=20)
            await asyncio.wait_for(gone.wait(), 20)
            assert a.connected

    asyncio.run(scenario())


def test_a_reload_in_the_middle_keeps_each_address_on_its_slot(
    start_wsup: Callable[..., Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = _start(start_wsup, "--ws-drain-window", "0.5")
    monkeypatch.setenv("WSUP_RUN_DIR", instance.env["WSUP_RUN_DIR"])
    before = {pid: slot for slot, pid in instance.worker_pids().items()}

    async def scenario() -> None:
        sources = [source_address(i) for i in range(12)]
        async with recorders(instance.url, sources, reconnection_delay=0.2, reconnection_delay_max=1) as clients:
            joins = collections.Counter[int]()

            async def rejoin(recorder: Recorder) -> None:
                await recorder.client.call("join", "lobby", timeout=20)
                joins[id(recorder)] += 1

            for recorder in clients:
                recorder.client.on("connect", lambda r=recorder: asyncio.ensure_future(rejoin(r)))
                await rejoin(recorder)
            slots = {id(r): before[r.worker] for r in clients}
            # Emits from outside the instance (the supervisor publishes them): they go on during the reload.
            reload = asyncio.create_task(
                asyncio.to_thread(instance.cli, "reload", "--name", instance.name, "--batch", "2")
            )
            sent = 0
            while not reload.done():
                await asyncio.to_thread(emit_to_instance, "said", {"text": f"r:{sent}"}, to="lobby", name=instance.name)
                sent += 1
            result = await reload
            assert result.returncode == 0, result.stderr
            after = {pid: slot for slot, pid in instance.worker_pids().items()}
            await eventually(
                lambda: all(r.welcomes == 2 and joins[id(r)] == 2 and r.worker in after for r in clients),
                "every client reconnected and rejoined",
                30,
            )
            for recorder in clients:
                assert after[recorder.worker] == slots[id(recorder)], "ip-hash kept the address on its slot"
            result = instance.cli(
                "publish",
                "socketio",
                "--json",
                orjson.dumps(emit_message("said", {"text": "end"}, to="lobby")).decode(),
            )
            assert result.returncode == 0, result.stderr
            await eventually(lambda: all(r.lines[-1:] == ["end"] for r in clients), "the last line", 20)
            for recorder in clients:
                assert len(recorder.lines) == len(set(recorder.lines)), "a line delivered twice"
                numbers = [int(line[2:]) for line in recorder.lines if line.startswith("r:")]
                assert numbers == sorted(numbers)

    asyncio.run(scenario())
    wait_until(lambda: not instance.status().get("draining"), 30, what="the old workers gone")

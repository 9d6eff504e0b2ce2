"""Unit tests of the broadcast bus without processes or sockets: wire format, WebSocket frames, backlog policy,
fan-out and sequence tracking in the hub, slow-consumer handling, and the public API on the in-process bus."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.websockets import WebSocket
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from ipc import broadcast
from ipc.bus_counters import BusCounters
from ipc.bus_hub import LocalBus
from ipc.bus_members import FrameMember, uvicorn_protocol
from ipc.bus_queue import CLOSE_TRY_AGAIN_LATER, Backlog, Outcome, Policy
from ipc.bus_remote import publish_args, publish_to_instance
from ipc.bus_wire import HEADER, BusMessage, Kind, check_size, decode, encode, encode_payload, validate_channel
from ipc.bus_wire import websocket_frame as build_frame
from ipc.errors import BusError, ConfigError, MessageTooLargeError, ProtocolError, SlowConsumerError
from supervisor.cli.status_view import _bus_line
from supervisor.process.status import bus_totals

# --- wire format ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.TEXT, Kind.BINARY, Kind.PROBE])
def test_wire_round_trip(kind: Kind) -> None:
    payload = "héllo".encode() if kind is Kind.TEXT else b"\x00\xff"
    frames = encode(b"room:1\x00", kind, 4242, 7, 3, payload)
    message = decode(frames, 1000)
    assert (message.channel, message.kind, message.origin, message.seq, message.exclude) == ("room:1", kind, 4242, 7, 3)
    assert message.payload == payload
    assert message.data == ("héllo" if kind is Kind.TEXT else payload)


def _header(version: int = 1, kind: int = 1) -> bytes:
    return HEADER.pack(version, kind, 0, 1, 1, 0)


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([b"room\x00", _header()], "has 2 frames"),
        ([b"room", _header(), b"x"], "terminating NUL"),
        ([b"\x00", _header(), b"x"], "terminating NUL"),
        ([b"ro\x00om\x00", _header(), b"x"], "terminating NUL"),
        ([b"room\x00", b"short", b"x"], "header has 5 bytes"),
        ([b"room\x00", _header(version=2), b"x"], "unsupported bus wire version 2"),
        ([b"room\x00", _header(kind=9), b"x"], "unknown bus message kind 9"),
        ([b"room\x00", _header(), b"\xff"], "invalid UTF-8"),
        ([b"\xffroom\x00", _header(kind=2), b"x"], "invalid UTF-8"),
        ([b"room\x00", _header(), b"x" * 11], "exceeds the 10-byte limit"),
    ],
)
def test_wire_rejects_malformed_messages(frames: list[bytes], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        decode(frames, 10)


def test_binary_payload_need_not_be_utf8() -> None:
    assert decode([b"room\x00", _header(kind=2), b"\xff"], 10).data == b"\xff"


@pytest.mark.parametrize(
    ("channel", "error"),
    [
        (1, "must be a str"),
        ("", "1 to 255 bytes"),
        ("é" * 128, "1 to 255 bytes"),
        ("a\x00b", "NUL"),
        ("\x01x", "reserved"),
    ],
)
def test_bad_channel_names_are_refused(channel: Any, error: str) -> None:
    with pytest.raises(BusError, match=error):
        validate_channel(channel)


def test_channel_names() -> None:
    assert validate_channel("room:1/é") == "room:1/é"
    assert validate_channel("x" * 255) == "x" * 255
    assert validate_channel("\x01sync", internal=True) == "\x01sync"


def test_payload_kinds() -> None:
    assert encode_payload("é") == (Kind.TEXT, "é".encode())
    assert encode_payload(b"\x00") == (Kind.BINARY, b"\x00")
    assert encode_payload(bytearray(b"ab")) == (Kind.BINARY, b"ab")
    assert encode_payload(memoryview(b"ab")) == (Kind.BINARY, b"ab")
    assert encode_payload({"a": [1, None]}) == (Kind.TEXT, b'{"a":[1,null]}')
    with pytest.raises(BusError, match="cannot publish a object"):
        encode_payload(object())


def test_size_limit_names_the_limit() -> None:
    check_size(b"x" * 10, 10)
    with pytest.raises(MessageTooLargeError, match=r"^message of 11 bytes exceeds the bus limit of 10 bytes"):
        check_size(b"x" * 11, 10)


# --- the WebSocket frame, checked by the websockets library's own parser ------------------------------------------


def _parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert reader.at_eof(), "bytes left after the frame"
        return frame
    raise AssertionError("the parser wanted more data")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("kind", [Kind.TEXT, Kind.BINARY])
def test_websocket_frame_is_valid(size: int, kind: Kind) -> None:
    payload = b"a" * size
    frame = _parse(build_frame(payload, kind))
    assert frame.opcode is (Opcode.TEXT if kind is Kind.TEXT else Opcode.BINARY)
    assert frame.fin and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert frame.data == payload


# --- backlog policy ---------------------------------------------------------------------------------------


def test_drop_oldest_keeps_the_newest() -> None:
    backlog: Backlog[int] = Backlog(3, Policy.DROP_OLDEST)
    outcomes = [backlog.push(n) for n in range(5)]
    assert outcomes == [Outcome.QUEUED] * 3 + [Outcome.DROPPED_OLDEST] * 2
    assert list(backlog) == [2, 3, 4]


def test_disconnect_refuses_past_the_limit() -> None:
    backlog: Backlog[int] = Backlog(2, Policy.DISCONNECT)
    assert [backlog.push(n) for n in range(3)] == [Outcome.QUEUED, Outcome.QUEUED, Outcome.OVERFLOW]
    assert list(backlog) == [0, 1]


def test_policy_and_limit_validation() -> None:
    assert Policy.parse("disconnect") is Policy.DISCONNECT
    with pytest.raises(ConfigError, match="--bus-policy must be one of drop-oldest, disconnect"):
        Policy.parse("block")
    with pytest.raises(ConfigError, match="--bus-queue"):
        Backlog(0, Policy.DROP_OLDEST)


# --- a uvicorn-like connection for FrameMember ------------------------------------------------------------------


class FakeTransport:
    def __init__(self, protocol: FakeProtocol) -> None:
        self.protocol = protocol
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True


class FakeProtocol:
    def __init__(self) -> None:
        self.transport = FakeTransport(self)
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False
        self.disconnected = False
        self.closed_with: list[int] = []

    def close_with(self, code: int) -> None:
        self.closed_with.append(code)
        self.close_sent = True
        self.transport.close()


def _frame_member(limit: int, policy: Policy) -> tuple[FrameMember, FakeProtocol, BusCounters]:
    protocol, counters = FakeProtocol(), BusCounters()
    member = FrameMember(1, object(), cast(WebSocketsSansIOProtocol, protocol), (limit, policy), counters)
    return member, protocol, counters


def test_frame_member_writes_directly_then_queues_while_paused() -> None:
    async def scenario() -> None:
        member, protocol, counters = _frame_member(2, Policy.DROP_OLDEST)
        assert member.send_frame(b"1")
        protocol.writable.clear()  # the transport's buffer went over its high-water mark
        assert all(member.send_frame(f) for f in (b"2", b"3", b"4"))
        assert protocol.transport.written == [b"1"] and list(member.backlog or ()) == [b"3", b"4"]
        assert counters.dropped_slow == 1
        protocol.writable.set()  # resume_writing
        for _ in range(3):
            await asyncio.sleep(0)
        assert protocol.transport.written == [b"1", b"3", b"4"] and not member.backlog
        protocol.close_sent = True
        assert not member.send_frame(b"5")

    asyncio.run(scenario())


def test_a_batch_goes_out_in_one_write_or_frame_by_frame_into_the_backlog() -> None:
    async def scenario() -> None:
        member, protocol, counters = _frame_member(2, Policy.DROP_OLDEST)
        member.pending += [b"a", b"b", b"c"]
        assert member.flush()
        assert protocol.transport.written == [b"abc"] and not member.pending
        protocol.writable.clear()
        member.pending += [b"d", b"e", b"f"]
        assert member.flush()
        assert list(member.backlog or ()) == [b"e", b"f"] and counters.dropped_slow == 1  # counted per message
        protocol.transport.closing = True
        member.pending.append(b"g")
        assert not member.flush() and not member.pending

    asyncio.run(scenario())


def test_frame_member_disconnects_a_slow_client_under_that_policy() -> None:
    async def scenario() -> None:
        member, protocol, counters = _frame_member(1, Policy.DISCONNECT)
        protocol.writable.clear()
        assert member.send_frame(b"1")
        assert not member.send_frame(b"2")
        assert protocol.closed_with == [CLOSE_TRY_AGAIN_LATER] and counters.disconnected_slow == 1
        assert not member.backlog

    asyncio.run(scenario())


def test_fast_path_sees_through_starlettes_wrapper_only() -> None:
    async def scenario() -> None:
        protocol = WebSocketsSansIOProtocol(Config(app=lambda *a: None), ServerState(), {})
        assert uvicorn_protocol(protocol.send) is protocol
        seen: list[object] = []

        async def endpoint(scope: Any, receive: Any, send: Any) -> None:
            seen.append(send)

        scope = {"type": "websocket", "path": "/", "headers": []}
        receive: Any = protocol.receive
        send: Any = protocol.send
        await wrap_app_handling_exceptions(endpoint, WebSocket(scope, receive, send))(scope, receive, send)
        assert uvicorn_protocol(seen[0]) is protocol  # Starlette's pass-through wrapper

        async def middleware_send(message: Any) -> None:
            await protocol.send(message)

        assert uvicorn_protocol(middleware_send) is None  # may change messages: fall back to the ASGI send

    asyncio.run(scenario())


# --- the hub and the public API on the in-process bus ---------------------------------------------------------


@pytest.fixture
def local_bus() -> Iterator[LocalBus]:
    bus = LocalBus(queue=4)
    broadcast.install(bus)
    yield bus
    broadcast.install(None)


def test_subscribe_and_publish_in_process(local_bus: LocalBus) -> None:
    async def scenario() -> list[Any]:
        async with broadcast.subscribe("a", "b") as messages:
            await broadcast.publish("a", "text")
            await broadcast.publish("b", b"bytes")
            await broadcast.publish("c", "not subscribed")
            await broadcast.publish("a", {"n": 1})
            got = [await anext(messages) for _ in range(3)]
        return [(m.channel, m.kind, m.data) for m in got] + [got[2].json()]

    assert asyncio.run(scenario()) == [
        ("a", Kind.TEXT, "text"),
        ("b", Kind.BINARY, b"bytes"),
        ("a", Kind.TEXT, '{"n":1}'),
        {"n": 1},
    ]
    assert local_bus.describe()["channels"] == 0  # left on exit


def test_join_exclude_and_leave_with_an_asgi_send(local_bus: LocalBus) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        first: list[Any] = []
        second: list[Any] = []

        async def send_first(message: Any) -> None:
            first.append(message)

        async def send_second(message: Any) -> None:
            second.append(message)

        membership = await broadcast.join(send_first, "room")
        assert not membership.fast and membership.channels == {"room"}
        async with broadcast.join(send_second, "room"):
            await broadcast.publish("room", "to everyone but the first", exclude=send_first)
            await broadcast.publish("room", b"to all")
            for _ in range(5):
                await asyncio.sleep(0)
        await broadcast.publish("room", "after the second left")
        await broadcast.leave(send_first)
        await broadcast.publish("room", "nobody")
        for _ in range(5):
            await asyncio.sleep(0)
        return first, second

    first, second = asyncio.run(scenario())
    assert first == [
        {"type": "websocket.send", "bytes": b"to all"},
        {"type": "websocket.send", "text": "after the second left"},
    ]
    assert second == [
        {"type": "websocket.send", "text": "to everyone but the first"},
        {"type": "websocket.send", "bytes": b"to all"},
    ]
    assert local_bus.describe()["members"] == 0


def test_join_refuses_what_is_not_a_websocket(local_bus: LocalBus) -> None:
    with pytest.raises(BusError, match="Starlette WebSocket or an ASGI send callable"):
        asyncio.run(broadcast.join(42, "room").__aenter__())
    with pytest.raises(BusError, match="reserved"):
        broadcast.join(print, "\x01x")


def test_slow_subscriber_drop_oldest_and_disconnect(local_bus: LocalBus) -> None:
    async def scenario() -> list[Any]:
        async with broadcast.subscribe("a") as messages:
            for n in range(6):
                await broadcast.publish("a", str(n))
            kept = [(await anext(messages)).data for _ in range(4)]
        async with broadcast.subscribe("a", policy="disconnect") as strict:
            for n in range(5):
                await broadcast.publish("a", str(n))
            with pytest.raises(SlowConsumerError, match="more than 4 messages behind"):
                [m async for m in strict]
        return kept

    assert asyncio.run(scenario()) == ["2", "3", "4", "5"]
    assert local_bus.counters.dropped_slow == 2 and local_bus.counters.disconnected_slow == 1


def test_publish_too_large_is_counted_and_refused() -> None:
    bus = LocalBus(max_bytes=3)
    with pytest.raises(MessageTooLargeError, match="bus limit of 3 bytes"):
        bus.publish("a", "four")
    assert bus.counters.too_large == 1 and bus.counters.published == 0


def test_sequence_gaps_are_counted_as_lost(local_bus: LocalBus) -> None:
    async def scenario() -> None:
        async with broadcast.subscribe("a") as messages:

            def arrive(origin: int, seq: int) -> None:
                local_bus.dispatch(BusMessage("a", Kind.TEXT, origin, seq, 0, b"x", "x"))

            for seq in (1, 2, 5, 6):  # 3 and 4 were lost between publisher and us
                arrive(100, seq)
            arrive(200, 9)  # first message seen from another publisher: a baseline, not a gap
            arrive(100, 1)  # a publisher that restarted its sequence: a new baseline
            arrive(100, 2)
            assert local_bus.counters.lost == 2
            assert local_bus.counters.received == 7
            assert len(messages.backlog) == 4  # the backlog is bounded at 4 (drop-oldest)

    asyncio.run(scenario())


def test_a_publishers_sequence_is_per_channel(local_bus: LocalBus) -> None:
    async def scenario() -> list[tuple[str, int]]:
        async with broadcast.subscribe("a", "b") as messages:
            for channel in "abab":
                await broadcast.publish(channel, "x")
            return [(m.channel, m.seq) for m in [await anext(messages) for _ in range(4)]]

    assert asyncio.run(scenario()) == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


# --- publishing from outside, status ----------------------------------------------------------------------------


def test_publish_from_outside_arguments_and_limits() -> None:
    assert publish_args("c", "é") == {"channel": "c", "text": "é"}
    assert publish_args("c", {"a": 1}) == {"channel": "c", "text": '{"a":1}'}
    assert publish_args("c", b"\xff") == {"channel": "c", "base64": base64.b64encode(b"\xff").decode()}
    with pytest.raises(MessageTooLargeError, match="publish it from a worker instead"):
        publish_to_instance("c", "x" * 300_000, name="never-started")


def test_status_sums_bus_counters_and_shows_drops() -> None:
    rows = [{"bus": {"delivered": 5, "dropped_slow": 1, "members": 2}}, {"bus": {"delivered": 7}}, {}]
    totals = bus_totals(rows)
    assert totals == {"delivered": 12, "dropped_slow": 1, "members": 2}
    line = _bus_line("bus", totals)
    assert line.startswith("bus: 2 members, 0 published, 12 delivered;") and "1 slow" in line
    assert orjson.loads(orjson.dumps(totals)) == totals
    assert struct.calcsize("!BBHIQQ") == HEADER.size == 24

"""Numbers from the wire stay bounded where they enter (defect 3): a forged bus sequence number, made-up origins,
counters near their limit, and a control reply that cannot be encoded. Without processes, except a real ZeroMQ
control socket for the last."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq
import zmq.asyncio

from ipc import broadcast, control
from ipc.bus_counters import BusCounters
from ipc.bus_hub import MAX_ORIGINS, LocalBus
from ipc.bus_wire import BusMessage, Kind
from ipc.errors import WsupError
from ipc.messages import MAX_COUNT, JSONObject, Report, Request, decode, encode


@pytest.fixture
def local_bus() -> Iterator[LocalBus]:
    bus = LocalBus(queue=16)
    broadcast.install(bus)
    yield bus
    broadcast.install(None)


def _report(bus: dict[str, int]) -> Report:
    return Report(
        pid=1, slot=0, generation=1, seq=1, http=0, websocket=0, in_flight=0, requests=0, websocket_sessions=0,
        loop_lag_ms=0.0, draining=False, dropped_reports=0, bus=bus,
    )  # fmt: skip


def test_a_forged_sequence_jump_is_a_new_baseline_not_a_loss(local_bus: LocalBus) -> None:
    async def scenario() -> None:
        async with broadcast.subscribe("a"):
            for origin in (100, 200):  # the attack: 1 then 2**64-1, from two origins
                local_bus.dispatch(BusMessage("a", Kind.TEXT, origin, 1, 0, b"x", "x"))
                local_bus.dispatch(BusMessage("a", Kind.TEXT, origin, (1 << 64) - 1, 0, b"x", "x"))
            local_bus.dispatch(BusMessage("a", Kind.TEXT, 100, 1 << 62, 0, b"x", "x"))  # back down: a restart

    asyncio.run(scenario())
    counters = local_bus.describe()
    assert counters["lost"] == 0 and counters["seq_jumps"] == 2
    assert decode(encode(_report(counters))) == _report(counters)  # the worker's report still goes through


def test_made_up_origins_do_not_grow_a_channel_without_bound(local_bus: LocalBus) -> None:
    async def scenario() -> int:
        async with broadcast.subscribe("a"):
            for origin in range(1, 3 * MAX_ORIGINS):
                local_bus.dispatch(BusMessage("a", Kind.TEXT, origin, 5, 0, b"x", "x"))
            return len(local_bus._channels["a"].last_seq)

    assert asyncio.run(scenario()) <= MAX_ORIGINS


def test_counters_saturate_below_what_a_report_accepts() -> None:
    counters = BusCounters(lost=MAX_COUNT * 4, received=(1 << 64) + 5)
    assert max(counters.as_dict().values()) == MAX_COUNT
    decode(encode(_report(counters.as_dict())))


def test_control_server_answers_a_reply_it_cannot_encode_and_keeps_serving(tmp_path: object) -> None:
    endpoint = f"ipc://{tmp_path}/control"

    async def handler(request: Request, progress: control.ProgressSink) -> JSONObject:
        return {"too_big": 1 << 70} if request.cmd == "bad" else {"ok": True}

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        server = control.ControlServer(context, endpoint, handler)
        task = asyncio.ensure_future(server.serve())
        try:
            with pytest.raises(WsupError, match="not encodable"):
                await asyncio.to_thread(control.call, endpoint, "bad", timeout=10)
            assert await asyncio.to_thread(control.call, endpoint, "good", timeout=10) == {"ok": True}
            assert not task.done() and server.unsendable == 1
        finally:
            task.cancel()
            server.close()
            context.destroy(0)

    asyncio.run(scenario())

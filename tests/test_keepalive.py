"""Keepalive pings from the worker's one wheel (supervisor/worker/keepalive.py): each connection is pinged once per
interval, never early, a stopped one never, one failing connection stops nobody else's; and with a real worker, a
client that answers stays, a client that does not is closed with 1011."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from supervisor.worker.keepalive import PingWheel, tick_for
from tests.raw_websocket import CLOSE, PING, PONG, handshake, read_frame, send_frame
from tests.wsup_harness import Instance, wait_until


class _Connection:
    def __init__(self, wheel: PingWheel, *, again_after: float | None = None, fail: bool = False) -> None:
        self.ping_due = -1
        self.pings: list[float] = []
        self._wheel, self._again_after, self._fail = wheel, again_after, fail

    def send_keepalive_ping(self) -> None:
        self.pings.append(asyncio.get_running_loop().time())
        if self._fail:
            raise RuntimeError("this connection's transport is broken")
        if self._again_after is not None:
            self._wheel.add(self, self._again_after)


def _run(scenario: Callable[[asyncio.AbstractEventLoop], object]) -> None:
    async def main() -> None:
        await scenario(asyncio.get_running_loop())  # type: ignore[misc]

    asyncio.run(main())


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


def test_each_connection_is_pinged_once_at_its_time_never_early() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        wheel = PingWheel(loop, 0.02)
        connections = [_Connection(wheel) for _ in range(3)]
        witness = _Connection(wheel)  # pinged after the others' second ping would have come, had there been one
        added_at = loop.time()
        delays = (0.15, 0.05, 0.1)
        for connection, delay in zip(connections, delays, strict=True):
            wheel.add(connection, delay)
        wheel.add(witness, 0.4)
        assert len(wheel) == 4
        await _until(lambda: bool(witness.pings))
        for connection, delay in zip(connections, delays, strict=True):
            assert len(connection.pings) == 1
            assert connection.pings[0] >= added_at + delay - 0.005
        assert connections[1].pings[0] <= connections[2].pings[0] <= connections[0].pings[0]
        assert len(wheel) == 0 and all(connection.ping_due == -1 for connection in connections)

    _run(scenario)


def test_a_discarded_connection_is_never_pinged_and_a_rescheduled_one_once() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        wheel = PingWheel(loop, 0.01)
        stopped, moved, witness = _Connection(wheel), _Connection(wheel), _Connection(wheel)
        wheel.add(stopped, 0.05)
        wheel.add(moved, 0.05)
        wheel.add(witness, 0.2)
        wheel.discard(stopped)
        wheel.add(moved, 0.1)  # its ping is moved, not doubled
        await _until(lambda: bool(witness.pings))
        assert stopped.pings == [] and len(moved.pings) == 1

    _run(scenario)


def test_a_failing_connection_stops_no_other_and_chained_pings_continue(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        wheel = PingWheel(loop, 0.01)
        broken = _Connection(wheel, fail=True)
        chained = _Connection(wheel, again_after=0.03)  # no pong deadline: uvicorn schedules the next at once
        wheel.add(broken, 0.02)
        wheel.add(chained, 0.02)
        await _until(lambda: len(chained.pings) >= 4)
        assert len(broken.pings) == 1 and broken.ping_due == -1
        wheel.discard(chained)
        assert len(wheel) == 0 and chained.ping_due == -1

    _run(scenario)
    failures = [record for record in caplog.records if record.getMessage() == "WebSocket keepalive ping failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_the_tick_is_an_eighth_of_the_interval_at_most_a_quarter_second() -> None:
    assert tick_for(20.0) == 0.25
    assert tick_for(0.4) == 0.05


def test_a_worker_pings_its_websockets_and_closes_the_silent_ones_with_1011(
    start_wsup: Callable[..., Instance],
) -> None:
    wsup = start_wsup("app:asgi", "-i", "1", "--ws-ping-interval", "0.3", "--ws-ping-timeout", "1")
    wsup.wait_ready(1)
    answering, answering_buffer = handshake(wsup.port)
    silent, silent_buffer = handshake(wsup.port)
    with answering, silent:
        pings = 0
        while pings < 5:  # five intervals, each ping answered: the connection stays
            opcode, payload = read_frame(answering, answering_buffer)
            assert opcode != CLOSE, f"an answering client was closed: {payload!r}"
            if opcode == PING:
                pings += 1
                send_frame(answering, PONG, payload)
        silent_frames: list[tuple[int, bytes]] = []
        while not silent_frames or silent_frames[-1][0] != CLOSE:
            silent_frames.append(read_frame(silent, silent_buffer))
        assert [opcode for opcode, _ in silent_frames].count(PING) == 1, silent_frames
        assert struct.unpack("!H", silent_frames[-1][1][:2])[0] == 1011
    gone = lambda: wsup.status()["totals"]["connections"]["websocket"] == 0  # noqa: E731
    wait_until(gone, 30, 0.1, "both WebSockets gone from the counts")

"""Worker → supervisor reporting: ready/failed notices and coalesced, heartbeat-carrying connection counts.

The worker side ticks on the worker's own event loop: if the loop is blocked, reports and heartbeats stop, which
is exactly what the supervisor must notice. Reports are sent when the counts change (``report_due`` says how soon)
or a heartbeat is due, at most one per tick, never one per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import zmq
import zmq.asyncio

from ipc.errors import ProtocolError
from ipc.messages import MAX_MESSAGE_BYTES, Failed, JSONObject, Message, Ready, Report, decode, encode

logger = logging.getLogger("wsup.stats")

REPORT_TICK_S = 0.05  # how often counts are sampled; a change is reported at the next tick
# The longest silence between two reports of a healthy worker. The event loop's heartbeat is the one each tick writes
# to the worker's shared page (ipc.counters.HEARTBEAT), read by the supervisor when it needs it: with a message
# every 0.1 s instead, idle workers woke the supervisor 10 times a second each, ~0.1 ms of its CPU every time.
HEARTBEAT_S = 1.0
# Under HTTP load the request counts change at every tick: changes of those alone (requests, in flight, HTTP
# connections) are reported at most this often. They feed `status` and the metrics, not steering's placement,
# which reads the live counts from the shared page: at 20 reports a second per worker, the supervisor spent ~1% of
# a core on them during a stream of short connections. A WebSocket opened or closed, a drain, and any change of the
# bus, close-code or limit counters is still reported at the next tick.
REPORT_BUSY_S = 0.25
# Reports queued for the supervisor: over 7 s of 128 workers' heartbeats; a worker counts what it cannot send.
STATS_HWM = 10_000


class Counts(NamedTuple):
    http: int
    websocket: int
    in_flight: int
    requests: int
    websocket_sessions: int
    draining: bool


Details = tuple[JSONObject, JSONObject, JSONObject]  # bus counters, close codes, HTTP limits


def report_due(
    now: float, last_sent: float, current: tuple[Counts, Details], last: tuple[Counts, Details] | None
) -> bool:
    """Whether the reporter's tick at ``now`` sends ``current``, ``last`` having been sent at ``last_sent``."""
    if last is None or now - last_sent >= HEARTBEAT_S:
        return True
    if current == last:
        return False
    (counts, details), (counts_then, details_then) = current, last
    if (counts.websocket, counts.draining, details) != (counts_then.websocket, counts_then.draining, details_then):
        return True
    return now - last_sent >= REPORT_BUSY_S


class StatsReporter:
    """The worker's side: one PUSH socket, never blocking the event loop."""

    def __init__(
        self,
        endpoint: str,
        *,
        pid: int,
        slot: int,
        generation: int,
        snapshot: Callable[[], Counts],
        bus_counters: Callable[[], JSONObject] | None = None,
        close_codes: Callable[[], JSONObject] | None = None,
        http_limits: Callable[[], JSONObject] | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, 64)
        self._socket.connect(endpoint)
        self._pid, self._slot, self._generation = pid, slot, generation
        self._snapshot = snapshot
        self._bus_counters = bus_counters
        self._close_codes = close_codes
        self._http_limits = http_limits
        self._heartbeat = heartbeat
        self._seq = 0
        self.dropped = 0
        self._last: tuple[Counts, Details] | None = None  # what the last tick's report sent, and when
        self._last_sent = 0.0

    def _send(self, message: Message) -> None:
        try:
            self._socket.send(encode(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            # The supervisor is not reading (busy or gone): count it; the next report carries fresh counts anyway.
            self.dropped += 1

    def send_ready(self) -> None:
        self._send(Ready(pid=self._pid, slot=self._slot, generation=self._generation))

    def send_failed(self, error: str) -> None:
        self._send(Failed(pid=self._pid, slot=self._slot, generation=self._generation, error=error))

    def _details(self) -> Details:
        """The report's counters besides the connection counts: bus, close codes, HTTP limits."""
        return (
            self._bus_counters() if self._bus_counters is not None else {},
            self._close_codes() if self._close_codes is not None else {},
            self._http_limits() if self._http_limits is not None else {},
        )

    def send_report(self, counts: Counts, loop_lag_ms: float, details: Details | None = None) -> None:
        bus, closes, http_limits = details if details is not None else self._details()
        self._seq += 1
        self._send(
            Report(
                pid=self._pid,
                slot=self._slot,
                generation=self._generation,
                seq=self._seq,
                http=counts.http,
                websocket=counts.websocket,
                in_flight=counts.in_flight,
                requests=counts.requests,
                websocket_sessions=counts.websocket_sessions,
                loop_lag_ms=round(loop_lag_ms, 2),
                draining=counts.draining,
                dropped_reports=self.dropped,
                bus=bus,
                closes=closes,
                http_limits=http_limits,
            )
        )

    def tick(self, now: float, loop_lag_ms: float) -> None:
        """One sample, every REPORT_TICK_S on the worker's loop (its clock, supervisor.worker.clock): the heartbeat
        in the shared page, and a report when ``report_due`` says so."""
        if self._heartbeat is not None:
            self._heartbeat()
        current = (self._snapshot(), self._details())
        if report_due(now, self._last_sent, current, self._last):
            self.send_report(current[0], loop_lag_ms, current[1])
            self._last, self._last_sent = current, now

    def close(self, linger_ms: int = 1000) -> None:
        """Flush what is queued (a Failed notice must reach the supervisor before the process exits)."""
        self._socket.close(linger=linger_ms)
        self._context.term()


class StatsReceiver:
    """The supervisor's side: a PULL socket; malformed messages are counted and logged, never raised."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str) -> None:
        self._socket = context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, STATS_HWM)
        # A frame larger than any valid report is refused by ZeroMQ before it is read into memory.
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._socket.bind(endpoint)
        self.malformed = 0

    async def receive(self) -> Ready | Failed | Report:
        while True:
            payload = await self._socket.recv()
            try:
                message = decode(payload)
                if not isinstance(message, Ready | Failed | Report):
                    raise ProtocolError(f"unexpected {message.TAG} message on the stats socket")
            except ProtocolError as exc:
                self.malformed += 1
                if self.malformed <= 10 or self.malformed % 1000 == 0:  # a flood must not flood the log too
                    logger.warning("dropped a malformed stats message (%d so far): %s", self.malformed, exc)
                continue
            return message

    def close(self) -> None:
        self._socket.close(linger=0)

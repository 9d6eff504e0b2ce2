"""A worker's side of the bus: one PUB connected to the supervisor's XSUB, one SUB connected to its XPUB.

Received messages are read on the worker's event loop (a reader on the SUB's file descriptor, drained in batches)
and dispatched to local members by the Hub. A new subscription is confirmed live before ``join`` returns: the
worker publishes a probe on the channel and waits for it to come back through the proxy, so a message published
anywhere after ``join`` returned cannot miss the new member (the race that loses broadcasts in other libraries).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Final

import zmq

from ipc.bus_hub import Channel, Hub
from ipc.bus_queue import Policy
from ipc.bus_wire import BUS_HWM, INTERNAL_PREFIX, SUBSCRIPTION_MAX_BYTES, Kind, decode, encode, frame_limit, topic
from ipc.errors import BusError, ProtocolError

logger = logging.getLogger("wsup.bus")

# Messages dispatched before yielding to the event loop: small enough that a burst reaches a member whose messages
# go through a task (the ASGI fallback, an in-process iterator) in pieces its task empties, not in one piece larger
# than its backlog.
DRAIN_BATCH: Final = 64
CONFIRM_TIMEOUT_S: Final = 10.0
PROBE_FIRST_RETRY_S: Final = 0.01
PROBE_MAX_RETRY_S: Final = 0.25
# Under load, messages that arrive within this window share one write per client (see _on_readable).
DEFAULT_COALESCE_S: Final = 0.005


@dataclass(slots=True)
class _Probe:
    channel: Channel
    deadline: float
    next_at: float
    delay: float = PROBE_FIRST_RETRY_S


class WorkerBus(Hub):
    """The bus client of one worker process. Use it from the event loop thread only (ZeroMQ sockets are not
    thread-safe)."""

    def __init__(
        self,
        bus_in: str,
        bus_out: str,
        *,
        queue: int,
        policy: Policy,
        max_bytes: int,
        origin: int | None = None,
        hwm: int = BUS_HWM,
        coalesce_s: float = DEFAULT_COALESCE_S,
    ) -> None:
        super().__init__(origin=origin or os.getpid(), queue=queue, policy=policy, max_bytes=max_bytes)
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, hwm)
        # Without NODROP a PUB at its high-water mark drops in silence; with it, send() says so and we count it.
        self._pub.setsockopt(zmq.XPUB_NODROP, 1)
        self._pub.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)  # it only ever receives subscriptions
        self._pub.connect(bus_in)
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, hwm)
        self._sub.setsockopt(zmq.MAXMSGSIZE, frame_limit(max_bytes))
        self._sub.connect(bus_out)
        self._fd: int = self._sub.FD
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probing: dict[str, _Probe] = {}
        self._prober: asyncio.Task[None] | None = None
        self._malformed_logged = 0
        self._closed = False
        self._coalesce_s = coalesce_s
        self._last_drain = 0.0
        self._drain_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._watching = False  # whether the loop watches the SUB's descriptor (not while a read is scheduled)

    async def start(self, timeout: float = CONFIRM_TIMEOUT_S) -> None:
        """Start reading, then wait until a probe makes the round trip through the proxy: from then on, nothing
        this worker publishes is lost to ZeroMQ's "slow joiner" (a PUB drops what it sends before it has
        heard the proxy's subscription)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._watching = True
        channel = self._open(f"{INTERNAL_PREFIX}sync.{self.origin}", internal=True)
        if channel.ready is not None:
            try:
                await asyncio.wait_for(asyncio.shield(channel.ready), timeout)
            except (TimeoutError, BusError):
                raise BusError(f"the bus proxy did not answer within {timeout:g}s: is the supervisor alive?") from None

    # --- transport ----------------------------------------------------------------------------------------
    def _transmit(self, channel: str, kind: Kind, seq: int, exclude: int, payload: bytes) -> bool:
        try:
            self._pub.send_multipart(encode(topic(channel), kind, self.origin, seq, exclude, payload), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _subscribe(self, channel: Channel) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._sub.setsockopt(zmq.SUBSCRIBE, channel.topic)
        # The ZeroMQ descriptor is edge-triggered and any socket call may consume its edge: look again.
        loop.call_soon(self._on_readable)
        ready = channel.ready = loop.create_future()
        ready.add_done_callback(_retrieve)
        now = loop.time()
        self._probing[channel.name] = _Probe(channel, now + CONFIRM_TIMEOUT_S, now + PROBE_FIRST_RETRY_S)
        self._send_probe(channel)
        if self._prober is None:
            self._prober = loop.create_task(self._probe_loop())

    def _unsubscribe(self, channel: Channel) -> None:
        if self._closed:
            return
        self._sub.setsockopt(zmq.UNSUBSCRIBE, channel.topic)
        if self._loop is not None:
            self._loop.call_soon(self._on_readable)
        probe = self._probing.get(channel.name)
        if probe is not None and probe.channel is channel:
            del self._probing[channel.name]

    def _send_probe(self, channel: Channel) -> None:
        frames = encode(channel.topic, Kind.PROBE, self.origin, next(self._tokens), 0, b"")
        try:
            self._pub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # retried by the probe loop

    async def _probe_loop(self) -> None:
        """Re-send probes (with backoff) for subscriptions not yet confirmed; fail them past the deadline."""
        loop = asyncio.get_running_loop()
        try:
            while self._probing:
                now = loop.time()
                wake = now + PROBE_MAX_RETRY_S
                for name, probe in list(self._probing.items()):
                    ready = probe.channel.ready
                    if ready is None or ready.done():
                        del self._probing[name]
                    elif now >= probe.deadline:
                        del self._probing[name]
                        ready.set_exception(
                            BusError(f"subscription to {name!r} not confirmed within {CONFIRM_TIMEOUT_S:g}s")
                        )
                    else:
                        if now >= probe.next_at:
                            self._send_probe(probe.channel)
                            probe.delay = min(probe.delay * 2, PROBE_MAX_RETRY_S)
                            probe.next_at = now + probe.delay
                        wake = min(wake, probe.next_at)
                await asyncio.sleep(max(0.001, wake - loop.time()))
        finally:
            self._prober = None

    def _on_readable(self) -> None:
        """Messages are waiting. Read them now, unless the last read was less than half the coalescing window
        ago: messages then come faster than two per window, so reading at the window's end sends each client
        several of them in one write. A quiet bus delivers at once (waiting would cost a timer wake-up and
        batch nothing); a busy one adds at most the window to a message's latency."""
        loop = self._loop
        if self._closed or self._drain_handle is not None or loop is None:
            return
        if loop.time() - self._last_drain < self._coalesce_s / 2:
            # Stop watching the descriptor until then: it stays readable until we read (the loop's epoll is
            # level-triggered), which would wake this loop over and over for nothing.
            loop.remove_reader(self._fd)
            self._watching = False
            self._drain_handle = loop.call_at(self._last_drain + self._coalesce_s, self._drain)
        else:
            self._drain()

    def _drain(self) -> None:
        self._drain_handle = None
        loop = self._loop
        if self._closed or loop is None:
            return
        if not self._watching:
            loop.add_reader(self._fd, self._on_readable)
            self._watching = True
        self._last_drain = loop.time()
        sub = self._sub
        max_bytes = self.max_bytes
        try:
            for _ in range(DRAIN_BATCH):
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return  # drained: the descriptor signals again when more arrives
                try:
                    message = decode(frames, max_bytes)
                except ProtocolError as exc:
                    self._on_malformed(exc)
                    continue
                try:
                    self.dispatch(message)
                except Exception:  # a bug must cost one message, not the worker's bus
                    logger.exception("bus: dispatch of a message on %r failed", message.channel)
            # A full batch: more may be queued, and the edge-triggered descriptor will not say so. Continue on
            # the next loop iteration, after other callbacks ran.
            self._drain_handle = loop.call_soon(self._drain)
        finally:
            self.flush()

    def _on_malformed(self, exc: ProtocolError) -> None:
        self.counters.malformed += 1
        if self._malformed_logged < 10 or self.counters.malformed % 1000 == 0:
            self._malformed_logged += 1
            logger.warning("bus: dropped a malformed message (%d so far): %s", self.counters.malformed, exc)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        if self._loop is not None and not self._loop.is_closed() and self._watching:
            self._loop.remove_reader(self._fd)
        self._pub.close(linger=0)
        self._sub.close(linger=0)
        self._context.term()


def _retrieve(future: asyncio.Future[None]) -> None:
    """A confirmation nobody awaits any more (every joiner left) must not log "exception never retrieved"."""
    if not future.cancelled():
        future.exception()

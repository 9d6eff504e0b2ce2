"""The supervisor's bus bridge, local side: what goes to Redis and what comes from it (the Redis session itself is
``bridge_redis``).

Two ZeroMQ sockets on the instance's bus, no change to the proxy:

- an XPUB *connected to the proxy's XSUB*. The XSUB forwards the first subscription and the last unsubscription of
  every channel (the proxy's XPUB side folds the workers' duplicates) to every publisher connected to it, and
  replays the current set to a publisher that connects late, so this socket sees exactly "channels with local
  members", which is what this host subscribes to in Redis. Messages from Redis are published on it.
- a SUB on the proxy's XPUB, subscribed to everything: every message published on this host, queued (bounded) for
  Redis. Messages this bridge injected carry an origin at or above ``REMOTE_ORIGIN_BASE`` and are not sent back.

Nothing here waits on Redis: a slow or absent Redis costs counted drops, never local delivery.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, cast

import zmq
import zmq.asyncio

from ipc.bridge_wire import REMOTE_ORIGIN_BASE, BridgeAddress, Envelope, pack, relayed
from ipc.bus_wire import BUS_HWM, HEADER, MAX_CHANNEL_BYTES, WIRE_VERSION, Kind

logger = logging.getLogger("wsup.bridge")

OUTBOX_LIMIT: Final = 10_000  # messages waiting for Redis; past it new ones are dropped and counted
MAX_TRACKED: Final = 100_000  # (origin, channel) sequences remembered; past it they start over (a new baseline)
READ_BATCH: Final = 256
_RELAYED: Final = frozenset({Kind.TEXT, Kind.BINARY})


@dataclass(slots=True)
class BridgeCounters:
    messages_out: int = 0  # published to Redis
    messages_in: int = 0  # received from other hosts and handed to the local bus
    dropped: dict[str, int] = field(
        default_factory=lambda: {
            "disconnected": 0,  # published here while Redis was away: not relayed
            "queue_full": 0,  # the queue towards Redis was full (Redis slower than this host's publishers)
            "failed": 0,  # in a batch Redis did not acknowledge (the connection broke under it)
            "before_bridge": 0,  # gaps in a local publisher's sequence: the proxy dropped them towards the bridge
            "local_full": 0,  # from Redis, but the local bus's queue was full
        }
    )
    malformed_in: int = 0
    looped_back: int = 0  # this host's own messages echoed by Redis, dropped on purpose
    reconnects: int = 0
    connect_failures: int = 0


class Bridge:
    """The bridge's state and its local sockets. Use from the supervisor's event loop only."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        bus_in: str,
        bus_out: str,
        *,
        address: BridgeAddress,
        prefix: str,
        max_bytes: int,
    ) -> None:
        self.address = address
        self.prefix = prefix
        self.prefix_bytes = prefix.encode("utf-8", "surrogatepass")
        self.max_bytes = max_bytes
        self.host_id = os.urandom(8)
        self.state = "connecting"
        self.last_error: str | None = None
        self.counters = BridgeCounters()
        self.wanted: set[bytes] = set()  # channels (UTF-8, no NUL) with members on this host
        self.subscribed: set[bytes] = set()  # channels this host is subscribed to in Redis right now
        self.wanted_changed = asyncio.Event()
        self.outbox: deque[tuple[bytes, bytes]] = deque()
        self.outbox_ready = asyncio.Event()
        self._out_seqs: dict[tuple[int, bytes], int] = {}
        self._origins: dict[tuple[bytes, int], int] = {}
        self._next_origin = 0
        self._xpub: zmq.asyncio.Socket = context.socket(zmq.XPUB)
        self._sub: zmq.asyncio.Socket = context.socket(zmq.SUB)
        for sock in (self._xpub, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
        self._xpub.setsockopt(zmq.SNDHWM, BUS_HWM)
        self._xpub.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue towards the proxy refuses the send: counted
        self._sub.setsockopt(zmq.RCVHWM, BUS_HWM)
        self._xpub.connect(bus_in)
        self._sub.connect(bus_out)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")

    # --- interest: which channels have local members ------------------------------------------------------
    async def watch_subscriptions(self) -> None:
        while True:
            event = await self._xpub.recv()
            if len(event) < 2 or event[0] not in (0, 1) or event[-1] != 0:
                continue  # the proxy's own catch-all subscription (no NUL), or a prefix nobody asked us about
            channel_topic = event[1:]
            if not relayed(channel_topic) or len(channel_topic) - 1 > MAX_CHANNEL_BYTES:
                continue
            channel = channel_topic[:-1]
            if event[0] == 1:
                self.wanted.add(channel)
            else:
                self.wanted.discard(channel)
            self.wanted_changed.set()

    # --- outgoing: this host's messages towards Redis -----------------------------------------------------
    async def pump_out(self) -> None:
        sub = self._sub
        while True:
            self._take(await sub.recv_multipart())
            for _ in range(READ_BATCH):  # what else is already here; a NOBLOCK call returns a done future
                try:
                    frames = cast("asyncio.Future[list[bytes]]", sub.recv_multipart(zmq.NOBLOCK)).result()
                except zmq.Again:
                    break
                self._take(frames)
            if self.outbox:
                self.outbox_ready.set()
            await asyncio.sleep(0)

    def _take(self, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != HEADER.size or not relayed(frames[0]):
            return
        version, kind, _flags, origin, seq, _exclude = HEADER.unpack(frames[1])
        if version != WIRE_VERSION or kind not in _RELAYED or origin >= REMOTE_ORIGIN_BASE:
            return  # probes stay local; a message from another host is not sent back to Redis
        channel = frames[0][:-1]
        key = (origin, channel)
        last = self._out_seqs.get(key, 0)
        if last and seq > last + 1:
            self.counters.dropped["before_bridge"] += seq - last - 1
        if len(self._out_seqs) >= MAX_TRACKED and key not in self._out_seqs:
            self._out_seqs.clear()
        self._out_seqs[key] = seq
        if self.state != "connected":
            self.counters.dropped["disconnected"] += 1
        elif len(self.outbox) >= OUTBOX_LIMIT:
            self.counters.dropped["queue_full"] += 1
        else:
            self.outbox.append((self.prefix_bytes + channel, pack(self.host_id, Kind(kind), origin, seq, frames[2])))

    # --- incoming: other hosts' messages onto the local bus -----------------------------------------------
    def deliver(self, channel: bytes, envelope: Envelope) -> None:
        """Publish a message from another host on the local bus (``channel`` already stripped of the prefix)."""
        if envelope.host == self.host_id:
            self.counters.looped_back += 1
            return
        key = (envelope.host, envelope.origin)
        origin = self._origins.get(key)
        if origin is None:
            if len(self._origins) >= MAX_TRACKED:
                self._origins.clear()
            origin = self._origins[key] = REMOTE_ORIGIN_BASE + self._next_origin
            self._next_origin = (self._next_origin + 1) % REMOTE_ORIGIN_BASE
        header = HEADER.pack(WIRE_VERSION, envelope.kind, 0, origin, envelope.seq, 0)
        # Through the asyncio socket (its NOBLOCK send returns a done future), so the recv waiting in
        # watch_subscriptions is woken if this call consumed the descriptor's edge.
        sent = self._xpub.send_multipart([channel + b"\x00", header, envelope.payload], zmq.NOBLOCK)
        if cast("asyncio.Future[object]", sent).exception() is not None:
            self.counters.dropped["local_full"] += 1
            return
        self.counters.messages_in += 1

    def check_channel(self, redis_channel: bytes) -> bytes | None:
        """The bus channel of a Redis channel under our prefix, or None if it is not one of ours."""
        if not redis_channel.startswith(self.prefix_bytes):
            return None
        channel = redis_channel[len(self.prefix_bytes) :]
        if not 1 <= len(channel) <= MAX_CHANNEL_BYTES or b"\x00" in channel or not relayed(channel + b"\x00"):
            return None
        try:
            channel.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return channel

    # --- state for the Redis session and status ------------------------------------------------------------
    def set_state(self, state: str, error: BaseException | None = None) -> None:
        if error is not None:
            self.last_error = self.address.redact(f"{type(error).__name__}: {error}")[:300]
        if state != self.state:
            logger.info("bridge %s: %s%s", self.address, state, f" ({self.last_error})" if error else "")
        self.state = state

    def lose_outbox(self) -> None:
        """Redis went away: what was waiting for it will not be relayed."""
        self.counters.dropped["disconnected"] += len(self.outbox)
        self.outbox.clear()
        self.subscribed.clear()

    def describe(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "state": self.state,
            "address": self.address.describe(),
            "prefix": self.prefix,
            "host_id": self.host_id.hex(),
            "channels": len(self.subscribed),
            "channels_local": len(self.wanted),
            "messages_out": counters.messages_out,
            "messages_in": counters.messages_in,
            "queue": len(self.outbox),
            "dropped": sum(counters.dropped.values()),
            "dropped_by_reason": dict(counters.dropped),
            "malformed_in": counters.malformed_in,
            "looped_back": counters.looped_back,
            "reconnects": counters.reconnects,
            "connect_failures": counters.connect_failures,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self._xpub.close(linger=0)
        self._sub.close(linger=0)

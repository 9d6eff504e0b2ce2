"""The bus inside one process, whatever carries it: channels and their members, publish, join/leave, and the
dispatch of each received message to the local members, with its WebSocket frame built once.

``Hub`` is the transport-independent part; ``bus_worker.WorkerBus`` carries it over ZeroMQ between workers, and
``LocalBus`` (here) loops it back inside a single process, for apps run without wsup (plain uvicorn, tests).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterable
from typing import Final

from ipc.bus_counters import BusCounters
from ipc.bus_members import FrameMember, Member
from ipc.bus_queue import Policy, validate_limit
from ipc.bus_wire import BusMessage, Kind, check_size, encode_payload, topic, validate_channel, websocket_frame
from ipc.errors import BusError
from ipc.settings import WorkerSettings, defaults

logger = logging.getLogger("wsup.bus")

# Publishers keep a sequence number per channel; past this many channels the least recently used is forgotten,
# and its next message restarts at 1, which receivers take as a new sequence, not as a loss.
MAX_SEQ_CHANNELS: Final = 65_536
# A gap in one origin's sequence larger than this is not a loss (ZeroMQ cannot drop that many between two messages
# a receiver sees: its queues hold BUS_HWM each) but a restarted or hostile publisher: counted as a jump, and the
# new number becomes the baseline, so a forged 2**64-1 never turns into an absurd loss count.
MAX_SEQ_GAP: Final = 1 << 20
# Origins remembered per channel (a worker's pid, the supervisor's); past this the oldest is forgotten, so frames
# with made-up origins cannot grow a channel's table without bound.
MAX_ORIGINS: Final = 4096
SWEEP_S: Final = 1.0  # how often members whose connection ended without a leave() are looked for


class Channel:
    """One channel with local members. ``ready`` is pending until the subscription is known to be live."""

    __slots__ = ("name", "topic", "frames", "others", "last_seq", "ready", "token_floor", "internal")

    def __init__(self, name: str, token_floor: int, internal: bool = False) -> None:
        self.name = name
        self.topic = topic(name)
        self.frames: dict[int, FrameMember] = {}  # members written to with the ready-made frame
        self.others: dict[int, Member] = {}  # members that take the message itself
        self.last_seq: dict[int, int] = {}  # origin -> last sequence number seen on this channel
        self.ready: asyncio.Future[None] | None = None
        self.token_floor = token_floor  # probes of this subscription carry a token at least this large
        self.internal = internal

    def __len__(self) -> int:
        return len(self.frames) + len(self.others)


class Hub:
    """Channels, members and counters of one process. Subclasses provide ``_transmit``/``_subscribe``."""

    def __init__(self, *, origin: int, queue: int, policy: Policy, max_bytes: int) -> None:
        self.origin = origin
        self.queue_limit = validate_limit(queue)
        self.policy = policy
        self.max_bytes = max_bytes
        self.counters = BusCounters()
        self._channels: dict[str, Channel] = {}
        self._internal_channels = 0  # never removed (see leave): the app's channels are the others
        self._members: dict[int, Member] = {}  # by id() of the object the app joined with
        self._seqs: dict[str, int] = {}  # channel -> last sequence number published, least recently used first
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None
        self._touched: list[FrameMember] = []  # members with frames pending in the current batch

    # --- what a transport provides ------------------------------------------------------------------------
    def _transmit(self, channel: str, kind: Kind, seq: int, exclude: int, payload: bytes) -> bool:
        """Hand one message to the transport without blocking; False if it had no room (counted by the caller)."""
        raise NotImplementedError

    def _subscribe(self, channel: Channel) -> None:
        """Start receiving ``channel``; leave ``channel.ready`` pending until that is confirmed, or None."""

    def _unsubscribe(self, channel: Channel) -> None:
        """Stop receiving ``channel``."""

    # --- publishing ---------------------------------------------------------------------------------------
    def publish(self, channel: str, message: object, exclude: object = None, *, count_refusal: bool = True) -> bool:
        """Send ``message`` to every member of ``channel`` in every worker; False if it was dropped (counted).

        ``count_refusal=False``: a caller that retries a refused message (back-pressure) counts its own loss.
        """
        validate_channel(channel)
        kind, payload = encode_payload(message)
        if len(payload) > self.max_bytes:
            self.counters.too_large += 1
            check_size(payload, self.max_bytes)
        excluded = self._members.get(id(exclude)) if exclude is not None else None
        exclude_id = excluded.id if excluded is not None and excluded.key is exclude else 0
        seq = self._seqs.pop(channel, 0) + 1
        sent = self._transmit(channel, kind, seq, exclude_id, payload)
        if sent:
            self.counters.published += 1
        else:
            if count_refusal:
                self.counters.dropped_hwm += 1
            seq -= 1  # not sent: receivers must not see a gap for it (it is counted here, once)
        self._seqs[channel] = seq  # re-inserted last: the dict stays in least-recently-used order
        if len(self._seqs) > MAX_SEQ_CHANNELS:
            del self._seqs[next(iter(self._seqs))]
        return sent

    # --- membership ---------------------------------------------------------------------------------------
    def next_id(self) -> int:
        return next(self._ids)

    def member(self, key: object) -> Member | None:
        found = self._members.get(id(key))
        return found if found is not None and found.key is key else None

    def register(self, member: Member) -> Member:
        self._members[id(member.key)] = member
        if member.fast and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return member

    def _open(self, name: str, *, internal: bool = False) -> Channel:
        channel = self._channels[name] = Channel(name, next(self._tokens), internal)
        self._internal_channels += internal
        self._subscribe(channel)
        return channel

    async def join(self, member: Member, channels: Iterable[str]) -> None:
        """Add ``member`` to ``channels``; return once every subscription is live (see ``_subscribe``)."""
        added: list[str] = []
        waits: list[asyncio.Future[None]] = []
        for name in channels:
            channel = self._channels.get(name) or self._open(name)
            if member.id not in channel.frames and member.id not in channel.others:
                if isinstance(member, FrameMember):
                    channel.frames[member.id] = member
                else:
                    channel.others[member.id] = member
                member.channels.add(name)
                added.append(name)
            if channel.ready is not None:
                waits.append(channel.ready)
        try:
            for ready in waits:
                await asyncio.shield(ready)  # shared by every joiner of a new channel: one joiner's cancel is its own
        except BaseException:
            self.leave(member, added)
            raise

    def leave(self, member: Member, channels: Iterable[str] | None = None) -> None:
        for name in list(member.channels) if channels is None else list(channels):
            member.channels.discard(name)
            channel = self._channels.get(name)
            if channel is None:
                continue
            channel.frames.pop(member.id, None)
            channel.others.pop(member.id, None)
            if not channel and not channel.internal:
                del self._channels[name]
                if channel.ready is not None and not channel.ready.done():
                    channel.ready.set_exception(BusError(f"left {name!r} before its subscription was confirmed"))
                self._unsubscribe(channel)
        if not member.channels and self._members.get(id(member.key)) is member:
            del self._members[id(member.key)]
            member.close()

    async def _sweep(self) -> None:
        """Remove WebSocket members whose connection ended without a leave (the app forgot, or crashed)."""
        try:
            while self._members:
                await asyncio.sleep(SWEEP_S)
                for member in list(self._members.values()):
                    if isinstance(member, FrameMember) and not member.alive():
                        self.leave(member)
        finally:
            self._sweeper = None

    # --- receiving ----------------------------------------------------------------------------------------
    def dispatch(self, message: BusMessage) -> None:
        """Deliver one message to the local members of its channel. Never blocks, never raises for a member."""
        channel = self._channels.get(message.channel)
        if channel is None:  # unsubscribed while it was in flight
            return
        if message.kind is Kind.PROBE:
            ready = channel.ready
            if message.origin == self.origin and ready is not None and message.seq >= channel.token_floor:
                channel.ready = None
                if not ready.done():
                    ready.set_result(None)
            return
        counters = self.counters
        counters.received += 1
        last_seq = channel.last_seq
        last = last_seq.get(message.origin, 0)
        if last and message.seq > last + 1:
            gap = message.seq - last - 1
            if gap <= MAX_SEQ_GAP:
                counters.lost += gap
            else:
                counters.seq_jumps += 1
        elif not last and len(last_seq) >= MAX_ORIGINS:
            del last_seq[next(iter(last_seq))]
        last_seq[message.origin] = message.seq  # a smaller seq is a restarted publisher: a new baseline
        skip = message.exclude if message.origin == self.origin else 0
        dead: list[Member] = []
        delivered = 0
        if channel.frames:
            frame = websocket_frame(message.payload, message.kind)  # once per message, for every member
            touched = self._touched
            for member_id, frame_member in channel.frames.items():
                if member_id == skip:
                    continue
                pending = frame_member.pending
                if not pending:
                    touched.append(frame_member)
                pending.append(frame)
                delivered += 1
        if channel.others:
            for member_id, member in channel.others.items():
                if member_id == skip:
                    continue
                if member.deliver(message):
                    delivered += 1
                else:
                    dead.append(member)
        counters.delivered += delivered
        for member in dead:
            self.leave(member)

    def flush(self) -> None:
        """End of a batch: write each touched member's frames in one go (see FrameMember)."""
        touched, self._touched = self._touched, []
        dead = [member for member in touched if not member.flush()]
        for member in dead:
            self.leave(member)

    def describe(self) -> dict[str, int]:
        """The counters for the worker's Report: totals since start, plus current channels and members."""
        # Counted, not scanned: this runs 20 times a second, and a Socket.IO app can hold a room per client.
        channels = len(self._channels) - self._internal_channels
        return {**self.counters.as_dict(), "channels": channels, "members": len(self._members)}

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for member in list(self._members.values()):
            self.leave(member)


class LocalBus(Hub):
    """The bus of a process that is not a wsup worker: publish delivers to this process's own members only."""

    def __init__(self, *, queue: int | None = None, policy: Policy | None = None, max_bytes: int | None = None) -> None:
        default = defaults(WorkerSettings)  # the same as --bus-queue, --bus-policy and --bus-max-bytes
        super().__init__(
            origin=os.getpid(),
            queue=queue if queue is not None else default["bus_queue"],
            policy=policy if policy is not None else Policy.parse(default["bus_policy"]),
            max_bytes=max_bytes if max_bytes is not None else default["bus_max_bytes"],
        )

    def _transmit(self, channel: str, kind: Kind, seq: int, exclude: int, payload: bytes) -> bool:
        data: str | bytes = payload.decode("utf-8") if kind is Kind.TEXT else payload
        self.dispatch(BusMessage(channel, kind, self.origin, seq, exclude, payload, data))
        self.flush()
        return True

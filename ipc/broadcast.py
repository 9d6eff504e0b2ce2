"""Publish to channels and receive from them across every worker of a wsup instance: the app's bus API.

    from ipc import broadcast

    await broadcast.publish("room:1", {"text": "hi"})          # str, bytes, or anything JSON-serialisable

    async with broadcast.join(websocket, "room:1"):             # this WebSocket gets every "room:1" message
        async for text in websocket.iter_text():
            await broadcast.publish("room:1", text, exclude=websocket)   # everyone else in the room

    async with broadcast.subscribe("room:1") as messages:       # in-process: an async iterator of Message
        async for message in messages:
            print(message.origin, message.data)

Semantics: at-most-once; messages from one publisher to one channel arrive in the order published; a message
published after ``join``/``subscribe`` returned reaches that subscriber (the subscription is confirmed first).
Every drop (slow client, full ZeroMQ queue, gap in a publisher's sequence) is counted in ``wsup status``.

In a wsup worker the bus spans every worker; anywhere else (plain uvicorn, tests) it is local to the process.
Call these functions from the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from ipc.bus_hub import Hub, LocalBus
from ipc.bus_members import AsgiMember, FrameMember, Member, Subscription, uvicorn_protocol
from ipc.bus_queue import Backlog, Policy
from ipc.bus_remote import publish_to_instance
from ipc.bus_wire import BusMessage, validate_channel
from ipc.errors import BusError

__all__ = [
    "Membership",
    "Message",
    "Subscription",
    "carried",
    "current",
    "install",
    "join",
    "leave",
    "publish",
    "publish_to_instance",
    "subscribe",
]

Message = BusMessage
_bus: Hub | None = None


def install(bus: Hub | None) -> None:
    """Make ``bus`` the process's bus (the wsup worker installs its ZeroMQ bus before the app starts)."""
    global _bus
    _bus = bus


def current() -> Hub:
    """The process's bus: the worker's, or a local one created on first use outside wsup."""
    global _bus
    if _bus is None:
        _bus = LocalBus()
    return _bus


def carried() -> bool:
    """True in a wsup worker (the bus spans every worker); False in any other process (the bus is local to it)."""
    return not isinstance(current(), LocalBus)


async def publish(channel: str, message: object, *, exclude: object = None) -> bool:
    """Publish ``message`` to every subscriber of ``channel`` in every worker.

    ``message``: ``str`` (a text frame), ``bytes`` (a binary frame) or any JSON-serialisable value (sent as
    its JSON text). ``exclude``: a WebSocket joined in this worker that must not get it (the sender, usually).
    Returns False if the bus dropped it because its queue was full (counted as ``dropped_hwm``). Raises
    MessageTooLargeError above ``--bus-max-bytes`` and BusError for a bad channel or message.
    """
    return current().publish(channel, message, exclude)


class Membership:
    """A WebSocket's place on the bus, returned by ``join``."""

    def __init__(self, hub: Hub, member: Member) -> None:
        self._hub = hub
        self._member = member

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._member.channels)

    @property
    def fast(self) -> bool:
        """True when messages are written to the connection directly (uvicorn), False on the ASGI fallback."""
        return self._member.fast


class _Join:
    """What ``join`` returns: ``await`` it to stay joined until ``leave`` (or the connection ends), or use it as
    ``async with`` to leave the channels again on exit."""

    def __init__(self, websocket: object, channels: tuple[str, ...]) -> None:
        for channel in channels:
            validate_channel(channel)
        self._websocket = websocket
        self._channels = channels
        self._member: Member | None = None

    async def _join(self) -> Membership:
        hub = current()
        member = hub.member(self._websocket) or hub.register(_new_member(hub, self._websocket))
        self._member = member
        await hub.join(member, self._channels)
        return Membership(hub, member)

    def __await__(self) -> Generator[Any, None, Membership]:
        return self._join().__await__()

    async def __aenter__(self) -> Membership:
        return await self._join()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._member is not None:
            current().leave(self._member, self._channels)


def join(websocket: object, *channels: str) -> _Join:
    """Join an accepted WebSocket to ``channels``: every message published to them is sent to it.

    ``websocket`` is a Starlette ``WebSocket`` (or a raw ASGI ``send`` callable). Returns once the
    subscriptions are live. ``async with broadcast.join(ws, ...)`` leaves on exit; a plain ``await`` stays
    joined until ``leave`` or until the connection closes. Joining again adds channels.
    """
    return _Join(websocket, channels)


async def leave(websocket: object, *channels: str) -> None:
    """Remove ``websocket`` from ``channels`` (from every channel if none are named)."""
    hub = current()
    member = hub.member(websocket)
    if member is not None:
        hub.leave(member, channels or None)


class _Subscribe:
    def __init__(self, channels: tuple[str, ...], max_backlog: int | None, policy: str | None) -> None:
        if not channels:
            raise BusError("subscribe() needs at least one channel")
        for channel in channels:
            validate_channel(channel)
        self._channels = channels
        self._max_backlog = max_backlog
        self._policy = Policy.parse(policy) if policy is not None else None
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        hub = current()
        backlog: Backlog[BusMessage] = Backlog(self._max_backlog or hub.queue_limit, self._policy or hub.policy)
        subscription = Subscription(hub.next_id(), backlog, hub.counters)
        self._subscription = subscription
        hub.register(subscription)
        await hub.join(subscription, self._channels)
        return subscription

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._subscription is not None:
            current().leave(self._subscription)


def subscribe(*channels: str, max_backlog: int | None = None, policy: str | None = None) -> _Subscribe:
    """``async with subscribe("a", "b") as messages: async for message in messages: ...``

    ``max_backlog`` (default ``--bus-queue``) bounds the messages waiting to be read; past it ``policy``
    (default ``--bus-policy``) applies: ``drop-oldest`` drops (counted), ``disconnect`` ends the iteration
    with SlowConsumerError.
    """
    return _Subscribe(channels, max_backlog, policy)


def _new_member(hub: Hub, websocket: object) -> Member:
    send: Any = getattr(websocket, "_send", None)  # Starlette's WebSocket keeps the ASGI send it was given
    if send is None:
        if not callable(websocket):
            raise BusError(f"join() takes a Starlette WebSocket or an ASGI send callable, got {type(websocket)}")
        send = websocket
    state = getattr(websocket, "application_state", None)
    if state is not None and getattr(state, "name", "") != "CONNECTED":
        raise BusError(f"join() needs an accepted, open WebSocket (its state is {state.name}): accept() first")
    protocol = uvicorn_protocol(send)
    if protocol is not None:
        if not protocol.handshake_complete or protocol.close_sent:
            raise BusError("join() needs an accepted, open WebSocket: await websocket.accept() first")
        return FrameMember(hub.next_id(), websocket, protocol, (hub.queue_limit, hub.policy), hub.counters)
    return AsgiMember(hub.next_id(), websocket, send, Backlog(hub.queue_limit, hub.policy), hub.counters)

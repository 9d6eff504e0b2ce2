"""A python-socketio client manager carried by wsup's bus: rooms and emits span every worker, no Redis. Runs in
each worker (and in scripts that emit from outside).

    import socketio
    from ipc.socketio import WsupManager

    manager = WsupManager()
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    asgi = socketio.ASGIApp(sio, on_startup=manager.start)   # subscribed before the worker takes connections

It is python-socketio's ``AsyncPubSubManager`` (the base of its Redis, Kafka and AMQP managers): every emit, room
change, disconnect and ack for a client on another worker becomes one message on the bus channel ``socketio``.
Those messages are the manager's control plane, so they do not go through the bounded, drop-oldest backlog that
protects the app from slow WebSocket clients: each worker reads them into a stream of its own whose bound
(100,000 messages) a worker's event loop does not reach, and a publish that meets a full bus queue waits for room
(back-pressure) instead of being dropped. Whatever is still lost is counted (``manager_*`` in ``wsup status``).

Outside wsup (plain uvicorn, tests) the bus is local to the process, so the manager is a single-process one. A
script can emit to the clients of a running instance: ``WsupManager(write_only=True)`` or ``emit_to_instance``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

try:
    from socketio.async_pubsub_manager import AsyncPubSubManager
except ImportError as exc:  # an optional extra: say how to get it
    raise ImportError("ipc.socketio needs python-socketio: pip install 'wsup[socketio]'") from exc

from ipc import broadcast
from ipc.bus_counters import BusCounters
from ipc.bus_members import Subscription
from ipc.bus_queue import Backlog, Policy, validate_limit
from ipc.bus_remote import publish_to_instance
from ipc.bus_wire import BusMessage, validate_channel
from ipc.errors import BusError
from ipc.messages import JSONObject

logger = logging.getLogger("wsup.socketio")

DEFAULT_CHANNEL: Final = "socketio"
# Manager messages a worker may hold before dropping (counted). Its own event loop empties the stream between
# two reads of the bus (64 messages), so this bound is a guard against a wedged handler, not a rate limit.
MANAGER_BACKLOG: Final = 100_000
# A publish that meets a full bus queue (10,000 messages on the way to the proxy) retries this long, backing off
# from PUBLISH_RETRY_FIRST_S to PUBLISH_RETRY_MAX_S, before it is given up and counted as unsent.
PUBLISH_WAIT_S: Final = 5.0
PUBLISH_RETRY_FIRST_S: Final = 0.001
PUBLISH_RETRY_MAX_S: Final = 0.05
START_TIMEOUT_S: Final = 10.0


class ManagerStream(Subscription):
    """The manager's subscription: a backlog of its own, far larger than a client's; overflow is counted apart."""

    __slots__ = ()

    def __init__(self, member_id: int, limit: int, counters: BusCounters) -> None:
        super().__init__(member_id, Backlog(validate_limit(limit), Policy.DROP_OLDEST), counters)

    def deliver(self, message: BusMessage) -> bool:
        if self.closed:
            return False
        counters = self.counters
        counters.manager_received += 1
        backlog = self.backlog
        if len(backlog) >= backlog.limit:
            backlog.popleft()
            counters.manager_dropped += 1
            if counters.manager_dropped in (1, 10, 100) or counters.manager_dropped % 10_000 == 0:
                logger.error("socketio: %d manager messages dropped: the stream is not read", counters.manager_dropped)
        backlog.append(message)
        if len(backlog) > counters.manager_backlog_peak:
            counters.manager_backlog_peak = len(backlog)
        self._wake()
        return True


class WsupManager(AsyncPubSubManager):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's client manager over the wsup bus. Arguments as ``AsyncRedisManager`` without the URL:

    ``channel``: the bus channel (default ``socketio``; several Socket.IO servers in one app need one each).
    ``write_only``: for code that only emits (a script, a task queue worker): outside a worker it publishes
    through the instance's control socket, to the instance ``instance`` (default: the only one running).
    ``max_backlog``: manager messages a worker holds before it drops (counted).
    """

    name = "wsup"

    def __init__(
        self,
        channel: str = DEFAULT_CHANNEL,
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        *,
        instance: str | None = None,
        max_backlog: int = MANAGER_BACKLOG,
    ) -> None:
        validate_channel(channel)
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self.instance = instance
        self.max_backlog = validate_limit(max_backlog)
        self._stream: ManagerStream | None = None
        self._live = asyncio.Event()

    async def start(self) -> None:
        """Subscribe now and return once the subscription is live. Give it to the ASGI app's startup
        (``socketio.ASGIApp(sio, on_startup=manager.start)``): the worker then reports ready only when messages
        for its clients can reach it. Without it the manager subscribes when the first client connects."""
        server = self.server
        if server is not None and not server.manager_initialized:
            server.manager_initialized = True
            self.initialize()
        try:
            await asyncio.wait_for(self._live.wait(), START_TIMEOUT_S)
        except TimeoutError:
            raise BusError(f"the Socket.IO manager did not subscribe within {START_TIMEOUT_S:g}s") from None

    # --- AsyncPubSubManager's transport -------------------------------------------------------------------
    async def _publish(self, data: JSONObject) -> None:
        text = self.json.dumps(data)  # the receiving managers parse with the server's JSON module
        if self.write_only and not broadcast.carried():
            # A script outside the instance: the supervisor publishes it (a blocking call: off the loop).
            await asyncio.to_thread(publish_to_instance, self.channel, text, name=self.instance)
            return
        hub = broadcast.current()
        delay, waited = PUBLISH_RETRY_FIRST_S, 0.0
        # The worker's own stream already handled it (AsyncPubSubManager calls _handle_* before _publish).
        while not hub.publish(self.channel, text, exclude=self._stream, count_refusal=False):
            if waited >= PUBLISH_WAIT_S:
                hub.counters.manager_unsent += 1
                logger.error("socketio: a %s message was not sent: the bus queue stayed full", data.get("method"))
                return
            await asyncio.sleep(delay)  # the bus queue is full: wait for room rather than drop a room change
            waited += delay
            delay = min(delay * 2, PUBLISH_RETRY_MAX_S)

    def _parse(self, message: BusMessage) -> dict[str, Any] | None:
        try:
            data = self.json.loads(message.data)
        except Exception:  # the server's JSON module: whatever it raises for bad input
            data = None
        if not valid_message(data):
            counters = broadcast.current().counters
            counters.manager_malformed += 1
            if counters.manager_malformed in (1, 10, 100) or counters.manager_malformed % 10_000 == 0:
                logger.warning("socketio: %d malformed manager messages dropped", counters.manager_malformed)
            return None
        result: dict[str, Any] = data
        return result

    async def _listen(self) -> AsyncIterator[dict[str, Any]]:
        hub = broadcast.current()
        stream = ManagerStream(hub.next_id(), self.max_backlog, hub.counters)
        hub.register(stream)
        try:
            await hub.join(stream, (self.channel,))
            self._stream = stream
            self._live.set()
            async for message in stream:
                data = self._parse(message)
                if data is not None:
                    yield data
        finally:
            self._stream = None
            self._live.clear()
            hub.leave(stream)


_STR, _OPT_STR = (str,), (str, type(None))
_ROOMS = (str, list, type(None))  # a room, several (python-socketio's `to=[...]`), or none
# What each method of AsyncPubSubManager needs, and the types it takes: a message that does not match is counted
# and dropped here, instead of failing in a handler (python-socketio logs a traceback per bad message).
_FIELDS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "emit": {"event": _STR, "data": (list,), "namespace": _OPT_STR, "room": _ROOMS, "skip_sid": _ROOMS},
    "disconnect": {"sid": _STR, "namespace": _OPT_STR},
    "enter_room": {"sid": _STR, "room": _STR, "namespace": _OPT_STR},
    "leave_room": {"sid": _STR, "room": _STR, "namespace": _OPT_STR},
    "close_room": {"room": _STR, "namespace": _OPT_STR},
    "callback": {"host_id": _STR, "sid": _STR, "namespace": _OPT_STR, "id": (int,), "args": (list,)},
}


def valid_message(data: object) -> bool:
    """Whether ``data`` is a manager message this worker can act on (see _FIELDS)."""
    if not isinstance(data, dict):
        return False
    fields = _FIELDS.get(data.get("method"))  # type: ignore[arg-type]
    if fields is None or not all(isinstance(data.get(name), types) for name, types in fields.items()):
        return False
    for name in ("room", "skip_sid"):  # a list of rooms or sids holds names, nothing else
        value = data.get(name)
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            return False
    if data["method"] != "emit":
        return True
    callback = data.get("callback")
    if callback is not None and not (
        isinstance(callback, list)
        and len(callback) == 3
        and isinstance(callback[0], str | list)
        and isinstance(callback[1], str)
        and isinstance(callback[2], int)
    ):
        return False
    # Binary attachments travel base64-encoded after the first element.
    return not data.get("binary") or all(isinstance(part, str) for part in data["data"][1:])


def emit_message(
    event: str,
    data: Any = None,
    *,
    to: str | None = None,
    namespace: str = "/",
    skip_sid: str | list[str] | None = None,
) -> JSONObject:
    """The bus message by which a ``WsupManager`` emits ``event`` (JSON ``data``; a tuple is several arguments)
    to a room or sid (``to``), or to every client of ``namespace``: what ``wsup publish socketio --json`` sends."""
    if not isinstance(event, str) or not event:
        raise BusError("a Socket.IO event name must be a non-empty str")
    args = list(data) if isinstance(data, tuple) else [data]
    return {
        "method": "emit",
        "event": event,
        "data": args,
        "binary": False,
        "namespace": namespace,
        "room": to,
        "skip_sid": skip_sid,
        "callback": None,
        "host_id": "external",
    }


def emit_to_instance(
    event: str,
    data: Any = None,
    *,
    to: str | None = None,
    namespace: str = "/",
    channel: str = DEFAULT_CHANNEL,
    name: str | None = None,
    timeout: float = 5.0,
) -> JSONObject:
    """Emit ``event`` to the Socket.IO clients of the running instance ``name``, from outside it (blocking).

    Raises what ``publish_to_instance`` raises (NotRunningError, BusError, ...)."""
    message = emit_message(event, data, to=to, namespace=namespace)
    return publish_to_instance(channel, message, name=name, timeout=timeout)

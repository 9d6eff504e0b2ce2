"""Who receives bus messages in a worker, and how each kind is written to without ever blocking the fan-out.

- ``FrameMember``: a WebSocket served by uvicorn's websockets-sansio protocol. The worker builds the frame once per
  message and writes those bytes straight to each member's transport; the ASGI ``send`` would re-encode the
  message and run a coroutine per client.
- ``AsgiMember``: any other WebSocket (a middleware that wraps ``send``, another server): correct but slower, one
  ASGI ``websocket.send`` per client, from a task of its own.
- ``Subscription``: an in-process async iterator (``broadcast.subscribe``).

Each has a bounded backlog (``bus_queue``) with the configured overflow policy; every drop is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ipc.bus_counters import BusCounters
from ipc.bus_queue import CLOSE_TRY_AGAIN_LATER, Backlog, Outcome, Policy
from ipc.bus_wire import BusMessage, Kind, websocket_frame
from ipc.errors import SlowConsumerError
from ipc.websocket_close import close_websocket

logger = logging.getLogger("wsup.bus")

AsgiSend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# A client cut off for being slow gets its close frame queued behind what it has not read; if it still has not
# read it after this, the connection is aborted so its buffers are freed.
ABORT_AFTER_S: Final = 2.0
_STARLETTE_SENDER: Final = (
    "starlette._exception_handler",
    "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender",
)


class Member:
    """Something joined to channels. ``id`` is unique in its worker; ``exclude=`` on publish names it."""

    __slots__ = ("id", "key", "channels")
    fast = False

    def __init__(self, member_id: int, key: object) -> None:
        self.id = member_id
        self.key = key  # the object the app joined with (kept alive, and used to find this member again)
        self.channels: set[str] = set()

    def deliver(self, message: BusMessage) -> bool:
        """Hand one message over without blocking; False once this member is gone (the caller removes it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Left every channel: stop any flushing."""


class FrameMember(Member):
    """A uvicorn WebSocket written to directly.

    The hub appends each message's ready-made frame to ``pending`` and calls ``flush`` once per batch: every
    message of the batch then goes out in one ``transport.write``, one system call, which is most of what a
    delivery costs (measured here: 5 µs per write of one small frame, 1.5 µs per frame when 4 share a write).
    """

    __slots__ = ("protocol", "transport", "writable", "limits", "backlog", "counters", "pending", "_flusher")
    fast = True

    def __init__(
        self,
        member_id: int,
        key: object,
        protocol: WebSocketsSansIOProtocol,
        limits: tuple[int, Policy],
        counters: BusCounters,
    ) -> None:
        super().__init__(member_id, key)
        self.protocol = protocol
        self.transport = protocol.transport
        self.writable = protocol.writable  # cleared by pause_writing: the transport's buffer is over its high mark
        # The backlog's (limit, policy); the backlog itself exists only while frames wait: an empty deque is 624
        # bytes, and a worker holds tens of thousands of members that read as fast as they are written to.
        self.limits = limits
        self.backlog: Backlog[bytes] | None = None
        self.counters = counters
        self.pending: list[bytes] = []  # frames of the current batch, written by flush()
        self._flusher: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return not (self.protocol.close_sent or self.transport.is_closing())

    def send_frame(self, frame: bytes) -> bool:
        if self.protocol.close_sent or self.transport.is_closing():
            return False
        if self.backlog or not self.writable.is_set():
            return self._enqueue(frame)
        self.transport.write(frame)
        return True

    def flush(self) -> bool:
        """Write the batch's frames: at once if nothing is queued before them, else through the backlog."""
        pending = self.pending
        if self.protocol.close_sent or self.transport.is_closing():
            pending.clear()
            return False
        if self.backlog or not self.writable.is_set():
            for frame in pending:
                if not self._enqueue(frame):
                    break
            pending.clear()
            return not self.protocol.close_sent
        self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()
        return True

    def deliver(self, message: BusMessage) -> bool:
        return self.send_frame(websocket_frame(message.payload, message.kind))

    def _enqueue(self, frame: bytes) -> bool:
        if self.backlog is None:
            self.backlog = Backlog(*self.limits)
        outcome = self.backlog.push(frame)
        if outcome is Outcome.OVERFLOW:
            self.counters.disconnected_slow += 1
            self.disconnect(CLOSE_TRY_AGAIN_LATER)
            return False
        if outcome is Outcome.DROPPED_OLDEST:
            self.counters.dropped_slow += 1
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return True

    async def _flush(self) -> None:
        try:
            while self.backlog:
                # uvicorn sets `writable` again in connection_lost too, so a dead client does not park us here.
                await self.writable.wait()
                if not self.alive():
                    self.backlog = None
                    return
                backlog = self.backlog
                while backlog and self.writable.is_set():
                    self.transport.write(backlog.popleft())
        finally:
            self._flusher = None
            if not self.backlog:
                self.backlog = None

    def disconnect(self, code: int) -> None:
        """Cut a slow client off: close frame queued, the app told (``websocket.disconnect``), abort if unread."""
        self.backlog = None
        protocol = self.protocol
        close_with: Callable[[int], None] | None = getattr(protocol, "close_with", None)
        if close_with is not None:
            close_with(code)  # wsup's protocol: the same path a drain uses
        elif isinstance(protocol, WebSocketsSansIOProtocol):
            close_websocket(protocol, code)
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.protocol.disconnected:
            self.transport.abort()

    def close(self) -> None:
        self.backlog = None


class AsgiMember(Member):
    """A WebSocket reached only through its ASGI ``send``: one send per message, from this member's own task."""

    __slots__ = ("send", "backlog", "counters", "gone", "_flusher")

    def __init__(
        self, member_id: int, key: object, send: AsgiSend, backlog: Backlog[BusMessage], counters: BusCounters
    ) -> None:
        super().__init__(member_id, key)
        self.send = send
        self.backlog = backlog
        self.counters = counters
        self.gone = False
        self._flusher: asyncio.Task[None] | None = None

    def deliver(self, message: BusMessage) -> bool:
        if self.gone:
            return False
        outcome = self.backlog.push(message)
        if outcome is Outcome.OVERFLOW:
            self.counters.disconnected_slow += 1
            self.gone = True
            self.backlog.clear()
            self._start(self._close(CLOSE_TRY_AGAIN_LATER))
            return False
        if outcome is Outcome.DROPPED_OLDEST:
            self.counters.dropped_slow += 1
        if self._flusher is None:
            self._flusher = self._start(self._flush())
        return True

    def _start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    async def _flush(self) -> None:
        try:
            while self.backlog and not self.gone:
                message = self.backlog.popleft()
                event: dict[str, Any] = {"type": "websocket.send"}
                event["text" if message.kind is Kind.TEXT else "bytes"] = message.data
                await self.send(event)
        except Exception as exc:  # ClientDisconnected, a closed state: this member is gone, not the worker
            logger.debug("bus member %d gone: %r", self.id, exc)
            self.gone = True
            self.backlog.clear()
        finally:
            self._flusher = None

    async def _close(self, code: int) -> None:
        try:
            await self.send({"type": "websocket.close", "code": code})
        except Exception as exc:
            logger.debug("bus member %d: close failed: %r", self.id, exc)

    def close(self) -> None:
        """Left every channel: nothing new arrives, and what was published while joined is still sent."""


class Subscription(Member):
    """``async for message in subscription``: an in-process subscriber with a bounded backlog."""

    __slots__ = ("backlog", "counters", "error", "closed", "_waiter")

    def __init__(self, member_id: int, backlog: Backlog[BusMessage], counters: BusCounters) -> None:
        super().__init__(member_id, None)
        self.key = self
        self.backlog = backlog
        self.counters = counters
        self.error: SlowConsumerError | None = None
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, message: BusMessage) -> bool:
        if self.closed:
            return False
        outcome = self.backlog.push(message)
        if outcome is Outcome.OVERFLOW:
            self.counters.disconnected_slow += 1
            self.error = SlowConsumerError(
                f"subscriber fell more than {self.backlog.limit} messages behind and was unsubscribed"
            )
            self.close()
            return False
        if outcome is Outcome.DROPPED_OLDEST:
            self.counters.dropped_slow += 1
        self._wake()
        return True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusMessage:
        while not self.backlog:
            if self.closed:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.backlog.popleft()


def uvicorn_protocol(send: object) -> WebSocketsSansIOProtocol | None:
    """The uvicorn WebSocket protocol behind an ASGI ``send``, if writing to it directly is known to be equivalent.

    uvicorn passes its protocol's bound ``send``. Starlette wraps it in a closure that passes every WebSocket
    message through unchanged, so that one wrapper is looked through; any other wrapper (a middleware that may
    change messages) makes this return None and the member falls back to the ASGI send.
    """
    for _ in range(4):
        owner = getattr(send, "__self__", None)
        if isinstance(owner, WebSocketsSansIOProtocol):
            return owner
        code = getattr(send, "__code__", None)
        closure = getattr(send, "__closure__", None)
        if (getattr(send, "__module__", None), getattr(send, "__qualname__", None)) != _STARLETTE_SENDER:
            return None
        if code is None or closure is None or "send" not in code.co_freevars:
            return None
        send = closure[code.co_freevars.index("send")].cell_contents
    return None

"""Control RPC between the CLI and the supervisor: a ROUTER in the supervisor, a DEALER per CLI call.

A request gets exactly one Reply and, for long operations such as a reload, any number of Progress messages
before it. Requests are handled concurrently, so ``wsup status`` answers while a reload runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from ipc.errors import ProtocolError, SupervisorTimeoutError, WsupError, error_from_kind
from ipc.messages import MAX_MESSAGE_BYTES, JSONObject, Progress, Reply, Request, decode, encode

logger = logging.getLogger("wsup.control")

ProgressSink = Callable[[JSONObject], None]
Handler = Callable[[Request, ProgressSink], Awaitable[JSONObject]]


# Requests handled at once; past this a request is answered "busy" (a flood must not grow tasks without bound).
MAX_CONCURRENT_REQUESTS = 256
CONTROL_HWM = 1000  # messages queued per client connection, each way
_MALFORMED_LOGGED = 10  # the first ones are logged in full, then one line per thousand


class ControlServer:
    """Receives control requests on a ROUTER socket and runs each one as its own task."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, handler: Handler) -> None:
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # A frame larger than any valid request is refused by ZeroMQ before it is read into memory.
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._socket.setsockopt(zmq.RCVHWM, CONTROL_HWM)
        self._socket.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        self._socket.bind(endpoint)
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.malformed = 0
        self.unsendable = 0  # replies that could not be encoded or queued (an error reply went instead, if it could)

    async def serve(self) -> None:
        while True:
            frames = await self._socket.recv_multipart()
            try:
                self._accept(frames)
            except Exception:  # never seen; a request must never end the control task
                self._count_malformed("a control message broke its handling (see the traceback)")
                logger.exception("control message handling failed")

    def _accept(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._count_malformed(f"a control message with {len(frames)} frames (expected 2)")
            return
        identity, payload = frames
        try:
            message = decode(payload)
            if not isinstance(message, Request):
                raise ProtocolError(f"expected a request, got a {message.TAG} message")
        except ProtocolError as exc:
            self._count_malformed(f"a malformed control message: {exc}")
            self._send(identity, Reply(id="", status="error", reason=str(exc), kind="ProtocolError"))
            return
        if len(self._tasks) >= MAX_CONCURRENT_REQUESTS:
            reason = f"the supervisor is handling {MAX_CONCURRENT_REQUESTS} requests: try again"
            self._send(identity, Reply(id=message.id, status="error", reason=reason, kind="WsupError"))
            return
        task = asyncio.create_task(self._handle(identity, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count_malformed(self, what: str) -> None:
        self.malformed += 1
        if self.malformed <= _MALFORMED_LOGGED or self.malformed % 1000 == 0:
            logger.warning("dropped %s (%d so far)", what, self.malformed)

    async def _handle(self, identity: bytes, request: Request) -> None:
        def progress(event: JSONObject) -> None:
            self._send(identity, Progress(id=request.id, event=event))

        try:
            result = await self._handler(request, progress)
        except WsupError as exc:
            reply = Reply(id=request.id, status="error", reason=str(exc), kind=type(exc).__name__)
        except Exception as exc:  # a bug in a handler must not take the supervisor down
            logger.exception("control command %r failed", request.cmd)
            reply = Reply(id=request.id, status="error", reason=f"internal error: {exc!r}", kind="InternalError")
        else:
            reply = Reply(id=request.id, status="ok", result=result)
        self._send(identity, reply)

    def _send(self, identity: bytes, message: Reply | Progress) -> None:
        try:
            data = encode(message)
        except (TypeError, ValueError) as exc:  # orjson: an int past 64 bits, a non-str key...: still answer
            self.unsendable += 1
            logger.error("could not encode a control %s: %s", message.TAG, exc)
            if isinstance(message, Progress):
                return
            data = encode(Reply(id=message.id, status="error", reason=f"reply not encodable: {exc}", kind="WsupError"))
        try:
            self._socket.send_multipart([identity, data], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.unsendable += 1
            logger.warning("could not answer a control client (its queue is full); reply dropped")
        except zmq.ZMQError as exc:  # an identity that is gone, or a socket being closed
            self.unsendable += 1
            logger.warning("could not answer a control client: %s", exc)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._socket.close(linger=0)


def call(
    endpoint: str,
    cmd: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float = 5.0,
    on_progress: ProgressSink | None = None,
) -> JSONObject:
    """Send one request and wait for its reply. ``timeout`` bounds the silence between two messages."""
    request = Request(id=uuid.uuid4().hex, cmd=cmd, args=args or {})
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.connect(endpoint)
        sock.send(encode(request))
        while True:
            if not sock.poll(int(timeout * 1000)):
                raise SupervisorTimeoutError(
                    f"the supervisor did not answer {cmd!r} within {timeout:g}s: it may be overloaded or stuck;"
                    " check its log, or stop it with `kill`"
                )
            message = decode(sock.recv())
            if isinstance(message, Progress) and message.id == request.id:
                if on_progress is not None:
                    on_progress(message.event)
            elif isinstance(message, Reply) and message.id in (request.id, ""):
                if message.status == "ok":
                    return message.result
                raise error_from_kind(message.kind, message.reason)

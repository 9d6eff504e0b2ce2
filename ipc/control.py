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
from ipc.messages import JSONObject, Progress, Reply, Request, decode, encode

logger = logging.getLogger("wsup.control")

ProgressSink = Callable[[JSONObject], None]
Handler = Callable[[Request, ProgressSink], Awaitable[JSONObject]]


class ControlServer:
    """Receives control requests on a ROUTER socket and runs each one as its own task."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, handler: Handler) -> None:
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.malformed = 0

    async def serve(self) -> None:
        while True:
            frames = await self._socket.recv_multipart()
            if len(frames) != 2:
                self.malformed += 1
                logger.warning("dropped a control message with %d frames (expected 2)", len(frames))
                continue
            identity, payload = frames
            try:
                message = decode(payload)
                if not isinstance(message, Request):
                    raise ProtocolError(f"expected a request, got a {message.TAG} message")
            except ProtocolError as exc:
                self.malformed += 1
                logger.warning("dropped a malformed control message: %s", exc)
                self._send(identity, Reply(id="", status="error", reason=str(exc), kind="ProtocolError"))
                continue
            task = asyncio.create_task(self._handle(identity, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
            self._socket.send_multipart([identity, encode(message)], flags=zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("could not answer a control client (its queue is full); reply dropped")

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

"""A test app for the broadcast bus: each WebSocket is driven by JSON commands from the test.

``/ws`` and ``/wrapped`` (the same handler behind a middleware that wraps ``send``, so the bus must fall back to
the ASGI send) greet with ``{"type": "hello", "pid": ...}`` and then obey ``{"op": ...}`` commands, answering each
with one reply. ``/inproc?channel=C`` forwards what an in-process ``broadcast.subscribe(C)`` yields.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ipc import broadcast
from ipc.errors import WsupError


async def _command(websocket: WebSocket, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "join":
        membership = await broadcast.join(websocket, *command["channels"])
        return {"type": "joined", "channels": sorted(membership.channels), "fast": membership.fast}
    if op == "leave":
        await broadcast.leave(websocket, *command.get("channels", []))
        return {"type": "left"}
    if op == "publish":
        exclude = websocket if command.get("exclude_self") else None
        sent = 0
        for n in range(command.get("count", 1)):
            if "text" in command:
                message: object = command["text"]
            elif "size" in command:
                message = "x" * command["size"]
            elif command.get("binary"):
                message = f"{command['tag']}:{n}".encode()
            else:
                message = {"type": "msg", "tag": command.get("tag", ""), "n": n, "src": os.getpid()}
                if command.get("pad"):
                    message["pad"] = "x" * command["pad"]
            sent += await broadcast.publish(command["channel"], message, exclude=exclude)
        return {"type": "published", "sent": sent}
    raise ValueError(f"unknown op {op!r}")


async def driven(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})
    try:
        while True:
            command = await websocket.receive_json()
            try:
                reply = await _command(websocket, command)
            except WsupError as exc:
                reply = {"type": "error", "kind": type(exc).__name__, "error": str(exc)}
            await websocket.send_json(reply)
    except WebSocketDisconnect:
        pass
    finally:
        await broadcast.leave(websocket)


async def inproc(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})
    async with broadcast.subscribe(websocket.query_params["channel"]) as messages:
        await websocket.send_json({"type": "ready"})
        async for message in messages:
            await websocket.send_json({"type": "inproc", "data": message.json(), "origin": message.origin})


class WrapSend:
    """A pure ASGI middleware that wraps ``send`` on ``/wrapped``: the bus cannot see through it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or scope["path"] != "/wrapped":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped)


asgi = Starlette(
    routes=[WebSocketRoute("/ws", driven), WebSocketRoute("/wrapped", driven), WebSocketRoute("/inproc", inproc)],
    middleware=[Middleware(WrapSend)],
)

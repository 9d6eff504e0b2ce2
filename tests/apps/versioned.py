"""A tiny app whose VERSION a test rewrites between reloads (copied into a temporary --app-dir)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

VERSION = "1"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"version {VERSION} pid {os.getpid()}")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid(), "version": VERSION})
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


asgi = Starlette(routes=[Route("/hello", hello), WebSocketRoute("/ws", ws)])

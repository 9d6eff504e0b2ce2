"""A test app whose worker can be made to block its own event loop, as a CPU-bound or badly written handler does.

``/ws`` greets each WebSocket with the worker's pid (like ``app:asgi``); a client that sends ``stall <seconds>``
makes that worker's event loop sleep (``time.sleep``: nothing else on the loop runs meanwhile), then answers
``{"type": "stalled", ...}``. ``/stall?seconds=S`` does the same over HTTP; ``/health`` answers with the pid.
"""

from __future__ import annotations

import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MAX_STALL_S = 30.0


def _stall(seconds: float) -> float:
    seconds = min(max(seconds, 0.0), MAX_STALL_S)
    time.sleep(seconds)  # on purpose: block the event loop, not just this task
    return seconds


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def stall(request: Request) -> JSONResponse:
    seconds = _stall(float(request.query_params.get("seconds", "2")))
    return JSONResponse({"type": "stalled", "pid": os.getpid(), "seconds": seconds})


async def websocket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})
    try:
        while True:
            text = await websocket.receive_text()
            command, _, argument = text.partition(" ")
            if command == "stall":
                seconds = _stall(float(argument or "2"))
                await websocket.send_json({"type": "stalled", "pid": os.getpid(), "seconds": seconds})
            else:
                await websocket.send_json({"type": "echo", "pid": os.getpid(), "text": text})
    except WebSocketDisconnect:
        pass


asgi = Starlette(routes=[Route("/health", health), Route("/stall", stall), WebSocketRoute("/ws", websocket)])

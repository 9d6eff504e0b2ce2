"""An app for the recycling, TLS and option tests.

``GET /hello`` answers; ``GET /leak?kib=N`` keeps N KiB more for the life of the worker (a memory leak);
``GET /scope`` returns what uvicorn put in the ASGI scope (client, scheme, root_path) and ``$LIFECYCLE_GREETING`` as
the app saw it at import; ``/ws`` greets each WebSocket with the worker's pid, like the demo.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

GREETING = os.environ.get("LIFECYCLE_GREETING")  # read at import, as apps read their settings
_leaked: list[bytes] = []


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello from {os.getpid()}")


async def leak(request: Request) -> PlainTextResponse:
    kib = min(65536, max(0, int(request.query_params.get("kib", "1"))))
    _leaked.append(b"x" * (kib << 10))  # written, so it is resident, not just reserved
    return PlainTextResponse(f"{len(_leaked)} leaks in {os.getpid()}")


async def scope(request: Request) -> JSONResponse:
    client = request.client
    return JSONResponse(
        {
            "client": client.host if client else None,
            "scheme": request.url.scheme,
            "root_path": request.scope.get("root_path", ""),
            "greeting": GREETING,
            "password_seen": os.environ.get("WSUP_SSL_KEYFILE_PASSWORD"),
            "pid": os.getpid(),
        }
    )


async def greet(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


asgi = Starlette(
    routes=[Route("/hello", hello), Route("/leak", leak), Route("/scope", scope), WebSocketRoute("/ws", greet)]
)

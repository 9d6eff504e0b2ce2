"""A test app whose startup waits until the file named by ``WSUP_TEST_GATE`` exists: the instance runs, its worker
is not ready, and a test decides when it becomes ready. ``/ws`` greets with the worker's pid like ``app:asgi``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    gate = os.environ["WSUP_TEST_GATE"]
    while not os.path.exists(gate):
        await asyncio.sleep(0.02)
    yield


async def hello(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


asgi = Starlette(routes=[WebSocketRoute("/ws", hello)], lifespan=lifespan)

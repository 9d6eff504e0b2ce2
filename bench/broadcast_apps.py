"""The servers under test in the broadcast benchmark, one per stack, all with the same two WebSocket endpoints:

- ``/sub``: subscribe to channel ``bench``, send ``ready <pid>``, then forward every message;
- ``/pub``: publish every text message received to ``bench``.

``wsup_app`` uses wsup's bus (``wsup start broadcast_apps:wsup_app --app-dir bench -i 4``); ``broadcaster_app``
uses encode/broadcaster over Redis (``BENCH_REDIS_URL``, run by ``uvicorn --workers 4``). The Socket.IO peer is
JavaScript: ``SOCKETIO_SERVER`` in broadcast_servers.py, run by PM2 in cluster mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ipc import broadcast

CHANNEL = "bench"


async def health(request: Any) -> PlainTextResponse:
    return PlainTextResponse(f"ok {os.getpid()}")


# --- wsup ---------------------------------------------------------------------------------------------------


async def wsup_sub(websocket: WebSocket) -> None:
    await websocket.accept()
    async with broadcast.join(websocket, CHANNEL):
        await websocket.send_text(f"ready {os.getpid()}")
        async for _ in websocket.iter_text():  # until the client goes away; the bus writes the messages
            pass


async def wsup_pub(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(f"ready {os.getpid()}")
    async for text in websocket.iter_text():
        await broadcast.publish(CHANNEL, text)


wsup_app = Starlette(
    routes=[Route("/health", health), WebSocketRoute("/sub", wsup_sub), WebSocketRoute("/pub", wsup_pub)]
)


# --- encode/broadcaster (Redis) ----------------------------------------------------------------------------------


def broadcaster_app() -> Starlette:
    """A factory, so that importing this module does not need broadcaster (a bench-only dependency).

    broadcaster 0.3.1 with Redis loses subscribers through two races, which the benchmark measures as they are
    with ``BENCH_BROADCASTER_WORKAROUND=0``: ``Broadcast.subscribe`` replaces the channel's subscriber set when
    two subscribe concurrently, and ``RedisBackend.subscribe`` wakes the listener before the Redis subscription
    exists, so the listener can find nothing subscribed, stop, and never restart: that worker then delivers
    nothing. With ``BENCH_BROADCASTER_WORKAROUND=1`` each worker subscribes at startup, before the listener can
    run, and keeps one subscriber for the app's life, so that the fan-out itself can be measured.
    """
    from broadcaster import Broadcast

    bus = Broadcast(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    workaround = os.environ.get("BENCH_BROADCASTER_WORKAROUND") == "1"

    async def discard(queue: asyncio.Queue[Any]) -> None:
        while True:
            await queue.get()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await bus.connect()
        keeper: asyncio.Task[None] | None = None
        if workaround:
            backend: Any = bus._backend
            await backend._pubsub.subscribe(CHANNEL)  # subscribed first...
            backend._ready.set()  # ...then the listener may start
            queue: asyncio.Queue[Any] = asyncio.Queue()
            bus._subscribers[CHANNEL] = {queue}  # never empty: later subscribers only join the set
            keeper = asyncio.create_task(discard(queue))
        yield
        if keeper is not None:
            keeper.cancel()
        await bus.disconnect()

    async def sub(websocket: WebSocket) -> None:
        await websocket.accept()
        async with bus.subscribe(channel=CHANNEL) as subscriber:
            await websocket.send_text(f"ready {os.getpid()}")
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                async for event in subscriber:  # broadcaster's documented chat pattern
                    await websocket.send_text(event.message)

    async def pub(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(f"ready {os.getpid()}")
        async for text in websocket.iter_text():
            await bus.publish(channel=CHANNEL, message=text)

    return Starlette(
        routes=[Route("/health", health), WebSocketRoute("/sub", sub), WebSocketRoute("/pub", pub)],
        lifespan=lifespan,
    )

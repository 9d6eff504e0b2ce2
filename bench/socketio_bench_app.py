"""The python-socketio app of bench/socketio_cluster.py: one room, a burst emitter, and a choice of client manager.

``BENCH_SIO_MANAGER``: ``wsup`` (``ipc.socketio.WsupManager``, the default), ``redis`` (python-socketio's
``AsyncRedisManager`` at ``BENCH_REDIS_URL``) or ``local`` (no manager: each worker an island, as a plain
``uvicorn --workers`` deployment is). ``/health`` answers ``ok <pid>``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ipc.socketio import WsupManager

_choice = os.environ.get("BENCH_SIO_MANAGER", "wsup")
manager: Any
startup: Any = None
if _choice == "redis":
    manager = socketio.AsyncRedisManager(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
elif _choice == "local":
    manager = None
else:
    manager = WsupManager()
    startup = manager.start
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
ROOM = "bench"


async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    await sio.enter_room(sid, ROOM)
    await sio.emit("welcome", {"worker": os.getpid()}, to=sid)


async def burst(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    """Emit ``count`` numbered messages to ``room`` (default: every client's), ``per_tick`` at a time every
    ``tick_s`` (0: at once); then tell the sender ``done``."""
    count, per_tick, tick = int(data["count"]), int(data.get("per_tick", 1)), float(data.get("tick_s", 0))
    loop = asyncio.get_running_loop()
    start = loop.time()
    room = str(data.get("room", ROOM))
    for seq in range(count):
        if tick and seq % per_tick == 0:
            await asyncio.sleep(max(0.0, start + (seq // per_tick) * tick - loop.time()))
        await sio.emit("m", {"seq": seq, "tag": data.get("tag", "")}, room=room)
    result = {"sent": count, "seconds": loop.time() - start}
    await sio.emit("done", result, to=sid)
    return result


sio.on("connect", connect)
sio.on("burst", burst)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"ok {os.getpid()}")


asgi = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/health", health)]), on_startup=startup)

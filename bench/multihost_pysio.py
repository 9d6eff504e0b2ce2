"""The python-socketio peer of bench/multihost.py: ``AsyncServer`` with ``AsyncRedisManager`` (BENCH_REDIS_URL),
one ``uvicorn`` per simulated host. Same roles as the wsup app: role=sub joins the room, role=pub publishes every
"publish" event to it. A bench-only dependency: ``.venv/bin/pip install python-socketio``."""

from __future__ import annotations

import os
from typing import Any

import socketio

manager = socketio.AsyncRedisManager(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, transports=["websocket"])


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    if "role=pub" not in environ.get("QUERY_STRING", ""):
        await sio.enter_room(sid, "bench")
    await sio.emit("ready", os.getpid(), to=sid)


@sio.on("publish")
async def publish(sid: str, payload: str) -> None:
    await sio.emit("msg", payload, room="bench")


app = socketio.ASGIApp(sio)

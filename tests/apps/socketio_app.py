"""The Socket.IO chat example plus the events the tests drive it with, each reaching across workers.

``whoami`` answers the worker's pid; ``kick``, ``enter``, ``ask`` and ``close`` act on a client or room that may
live on another worker (disconnect, enter_room, an emit with an ack, close_room); ``burst`` emits numbered lines.
"""

from __future__ import annotations

import os
from typing import Any

from app.socketio_chat import asgi, sio

__all__ = ["asgi"]


async def whoami(sid: str, data: Any = None) -> dict[str, Any]:
    return {"worker": os.getpid(), "sid": sid}


async def kick(sid: str, target: str) -> dict[str, Any]:
    await sio.disconnect(target)
    return {"ok": True}


async def enter(sid: str, data: dict[str, str]) -> dict[str, Any]:
    await sio.enter_room(data["sid"], data["room"])
    return {"ok": True}


async def ask(sid: str, target: str) -> Any:
    # An emit with an ack to a client that may be on another worker: the answer comes back through the bus.
    return await sio.call("question", {"from": os.getpid()}, to=target, timeout=10)


async def close(sid: str, room: str) -> dict[str, Any]:
    await sio.close_room(room)
    return {"ok": True}


async def burst(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    for seq in range(int(data["count"])):
        await sio.emit(
            "said", {"room": data["room"], "text": f"{data['tag']}:{seq}", "from": os.getpid()}, room=data["room"]
        )
    return {"ok": True}


for _handler in (whoami, kick, enter, ask, close, burst):
    sio.on(_handler.__name__, _handler)

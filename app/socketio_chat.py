"""A python-socketio chat on every core: ``wsup start app.socketio_chat:asgi -i 4 --balance ip-hash``.

Rooms and emits reach the clients of every worker through ``WsupManager`` (wsup's bus: no Redis), and
``--balance ip-hash`` sends each browser's polling requests and its WebSocket upgrade to the worker that holds its
Engine.IO session (no nginx ``ip_hash``). Open http://127.0.0.1:8000 in a few tabs: each line names the worker
that sent it and the worker that delivered it. Needs ``pip install 'wsup[socketio]'``.
"""

from __future__ import annotations

import os
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from ipc.socketio import WsupManager

MAX_TEXT = 500
MAX_ROOM = 64

manager = WsupManager()
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)


async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    await sio.save_session(sid, {"name": _text(auth.get("name") if isinstance(auth, dict) else None, 32) or sid[:6]})
    await sio.emit("welcome", {"worker": os.getpid(), "sid": sid}, to=sid)


async def join(sid: str, room: Any) -> dict[str, Any]:
    """``socket.emit("join", "lobby", ack)``: enter a room (and announce it to the room, on every worker)."""
    name = _room(room)
    await sio.enter_room(sid, name)
    session = await sio.get_session(sid)
    await sio.emit("joined", {"room": name, "name": session["name"], "worker": os.getpid()}, room=name)
    return {"room": name, "worker": os.getpid()}


async def leave(sid: str, room: Any) -> None:
    await sio.leave_room(sid, _room(room))


async def say(sid: str, data: Any) -> dict[str, Any]:
    """``socket.emit("say", {room, text}, ack)``: every member of the room gets ``said``, wherever it is served."""
    if not isinstance(data, dict):
        return {"error": "say takes {room, text}"}
    name = _room(data.get("room"))
    session = await sio.get_session(sid)
    line = {"room": name, "name": session["name"], "text": _text(data.get("text"), MAX_TEXT), "from": os.getpid()}
    await sio.emit("said", line, room=name)
    return {"ok": True}


for _handler in (connect, join, leave, say):
    sio.on(_handler.__name__, _handler)  # what @sio.event does (its decorator is untyped)


def _room(value: Any) -> str:
    text = _text(value, MAX_ROOM)
    return text or "lobby"


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsup + Socket.IO chat</title>
<script src="https://cdn.socket.io/4.8.1/socket.io.min.js"></script>
<style>body{font:15px system-ui;margin:2em;max-width:44em}#log{border:1px solid #ccc;padding:.5em;height:22em;
overflow:auto;font-family:monospace;white-space:pre-wrap}</style></head>
<body><h1>Socket.IO chat on wsup</h1>
<p>Page served by worker <b>%(pid)s</b>. Socket.IO: <span id="state">connecting…</span></p>
<div id="log"></div>
<form id="f"><input id="msg" size="50" maxlength="500" autocomplete="off" placeholder="say something">
<button>send</button></form>
<script>
const log = (t) => { const d = document.getElementById("log"); d.textContent += t + "\\n"; d.scrollTop = 1e9; };
const socket = io();  // polling first, then the WebSocket upgrade: both reach the same worker (ip-hash)
socket.on("connect", () => socket.emit("join", "lobby", (r) => log(`joined ${r.room} (worker ${r.worker})`)));
socket.on("welcome", (w) => document.getElementById("state").textContent = `connected to worker ${w.worker}`);
socket.on("said", (m) => log(`${m.name}: ${m.text}   (sent by worker ${m.from})`));
socket.on("disconnect", (why) => log(`disconnected: ${why}; reconnecting…`));
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault(); const i = document.getElementById("msg");
  if (i.value) socket.emit("say", {room: "lobby", text: i.value}); i.value = "";
};
</script></body></html>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE % {"pid": os.getpid()})


# The manager subscribes during startup, so a worker is ready only once emits from the others can reach it.
asgi = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/", page)]), on_startup=manager.start)

"""The wsup demo app (``app:asgi``): a chat across workers.

The page names the worker that served it. Its WebSocket (``/ws``) may land on any worker; a line typed in one
browser is published on wsup's broadcast bus and appears in every browser, tagged with the worker it came from and
the worker that delivered it. Run it with ``wsup start app:asgi -i 4`` and open http://127.0.0.1:8000 in a few tabs.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ipc import broadcast

CHANNEL = "chat"
MAX_LINE = 500  # characters: a demo, not a file transfer

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsup chat</title>
<style>body{font:15px system-ui;margin:2em;max-width:44em}#log{border:1px solid #ccc;padding:.5em;height:22em;
overflow:auto;font-family:monospace;white-space:pre-wrap}.via{color:#888}</style></head>
<body><h1>wsup chat</h1>
<p>This page was served by worker <b>%(pid)s</b>. Your WebSocket: <span id="state">connecting…</span></p>
<div id="log"></div>
<form id="f"><input id="msg" size="50" maxlength="500" autocomplete="off" placeholder="say something">
<button>send</button></form>
<script>
let ws, worker = '?';
const state = (t) => document.getElementById('state').textContent = t;
function show(text, tag) {
  const log = document.getElementById('log'), line = document.createElement('div');
  if (tag) { const s = document.createElement('span'); s.className = 'via'; s.textContent = tag + ' '; line.append(s); }
  line.append(text); log.append(line); log.scrollTop = 1e9;
}
function connect() {
  ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === 'hello') { worker = m.pid; state('on worker ' + worker); }
    else if (m.type === 'chat') show(m.text, '[from worker ' + m.from + ', via worker ' + worker + ']');
  };
  ws.onclose = (e) => {
    state('closed (' + e.code + '), reconnecting…'); setTimeout(connect, 500 + Math.random() * 1000);
  };
}
connect();
document.getElementById('f').onsubmit = (e) => {
  e.preventDefault(); const m = document.getElementById('msg');
  if (m.value && ws.readyState === WebSocket.OPEN) { ws.send(m.value); m.value = ''; }
};
</script></body></html>
"""


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE % {"pid": os.getpid()})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def hello(request: Request) -> PlainTextResponse:
    """A minimal endpoint for throughput benchmarks."""
    return PlainTextResponse("hello")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})  # first message: which worker holds us
    # Every "chat" message, published by any worker, is sent to this WebSocket until it closes.
    async with broadcast.join(websocket, CHANNEL):
        async for text in websocket.iter_text():  # ends when the client goes away
            await broadcast.publish(CHANNEL, {"type": "chat", "from": os.getpid(), "text": text[:MAX_LINE]})


asgi = Starlette(
    routes=[
        Route("/", homepage),
        Route("/health", health),
        Route("/hello", hello),
        WebSocketRoute("/ws", chat),
    ]
)

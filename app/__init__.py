"""The wsup demo app (``app:asgi``): a page that names the worker that served it, and a WebSocket at ``/ws``."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsup demo</title>
<style>body{font:15px system-ui;margin:2em;max-width:40em}#log{border:1px solid #ccc;padding:.5em;height:20em;
overflow:auto;font-family:monospace}</style></head>
<body><h1>wsup demo</h1><p>This page was served by worker pid <b>%(pid)s</b>.</p>
<p>WebSocket: <span id="state">connecting…</span></p><div id="log"></div>
<form id="f"><input id="msg" size="40" autocomplete="off" placeholder="say something"><button>send</button></form>
<script>
const log = (t) => { const d = document.getElementById('log'); d.textContent += t + '\\n'; d.scrollTop = 1e9; };
let ws;
function connect() {
  ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onopen = () => document.getElementById('state').textContent = 'connected';
  ws.onmessage = (e) => log(e.data);
  ws.onclose = (e) => { document.getElementById('state').textContent = 'closed (' + e.code + '), reconnecting';
                        setTimeout(connect, 500 + Math.random() * 1000); };
}
connect();
document.getElementById('f').onsubmit = (e) => { e.preventDefault(); const m = document.getElementById('msg');
  if (m.value) { ws.send(m.value); m.value = ''; } };
</script></body></html>
"""


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE % {"pid": os.getpid()})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def hello(request: Request) -> PlainTextResponse:
    """A minimal endpoint for throughput benchmarks."""
    return PlainTextResponse("hello")


async def websocket_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello", "pid": os.getpid()})
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_json({"type": "echo", "pid": os.getpid(), "text": text})
    except WebSocketDisconnect:
        pass


asgi = Starlette(
    routes=[
        Route("/", homepage),
        Route("/health", health),
        Route("/hello", hello),
        WebSocketRoute("/ws", websocket_echo),
    ]
)

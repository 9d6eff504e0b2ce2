"""The wsup demo app (``app:asgi``): a chat across workers.

The page names the worker that served it. Its WebSocket (``/ws``) may land on any worker; a line typed in one
browser is published on wsup's broadcast bus and appears in every browser, tagged with the worker it came from and
the worker that delivered it. Run it with ``wsup start app:asgi -i 4`` and open http://127.0.0.1:8000 in a few tabs.
"""

from __future__ import annotations

import html
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ipc import broadcast

CHANNEL = "chat"
MAX_LINE = 500  # characters: a demo, not a file transfer

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>wsup chat</title>
<link rel="icon" type="image/svg+xml" href="/favicon.svg">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:46em;padding:0 1em;color:#1e293b}
h1{font-size:1.5em;margin:.2em 0}.bar{display:flex;gap:1em;flex-wrap:wrap;align-items:baseline;color:#475569}
#state{font-weight:600}#state.open{color:#047857}#state.closed{color:#b45309}
#log{border:1px solid #cbd5e1;border-radius:8px;padding:.6em .8em;height:22em;overflow:auto;margin:.8em 0;
font-family:ui-monospace,monospace;font-size:14px;white-space:pre-wrap;overflow-wrap:anywhere}
.via{color:#64748b}.sys{color:#b45309}.pub{color:#6d28d9}
form{display:flex;gap:.5em}#msg{flex:1;padding:.45em .6em;font:inherit;border:1px solid #94a3b8;border-radius:6px}
button{padding:.45em 1em;font:inherit;border-radius:6px;border:0;background:#0f766e;color:#fff;cursor:pointer}
#queued{color:#b45309;font-size:13px;min-height:1.2em}a{color:#0f766e}
</style></head>
<body><h1>wsup chat</h1>
<div class="bar"><span>page served by worker %(pid)s</span><span>WebSocket: <span id="state">connecting…</span></span>
%(dashboard)s</div>
<div id="log"></div>
<form id="f"><input id="msg" maxlength="500" autocomplete="off" placeholder="say something" autofocus>
<button>send</button></form><div id="queued"></div>
<script>
"use strict";
let ws = null, worker = null, retry = 0, outbox = [], everOpen = false;
const $ = (id) => document.getElementById(id);
function state(text, cls) { $("state").textContent = text; $("state").className = cls || ""; }
function show(text, tag, cls) {
  const log = $("log"), line = document.createElement("div");
  if (cls) line.className = cls;
  if (tag) { const s = document.createElement("span"); s.className = "via"; s.textContent = tag + " "; line.append(s); }
  line.append(text); log.append(line); log.scrollTop = 1e9;
}
function where(m) { return "worker " + m.pid + (m.slot != null ? " (slot " + m.slot + ")" : ""); }
function pending() { $("queued").textContent = outbox.length ? outbox.length + " message(s) waiting to be sent…" : ""; }
function flush() { while (outbox.length && ws && ws.readyState === WebSocket.OPEN) ws.send(outbox.shift()); pending(); }
function received(data) {
  let m = null;
  try { m = JSON.parse(data); } catch (e) { m = null; }
  if (m && m.type === "hello") {
    const was = worker; worker = m;
    state("on " + where(m), "open");
    if (was && was.pid !== m.pid) show("now on " + where(m) + " (was worker " + was.pid + ")", "", "sys");
    flush();
  } else if (m && m.type === "chat") {
    show(m.text, "[from worker " + m.from + ", via worker " + (worker ? worker.pid : "?") + "]");
  } else if (m && typeof m === "object" && typeof m.text === "string") {
    show(m.text, "[" + (m.type || "message") + "]", "pub");  // e.g. publish_to_instance(..., {"type": "notice", ...})
  } else show(typeof data === "string" ? data : "(binary message)", "[published]", "pub");
}
function connect() {
  state(everOpen ? "reconnecting…" : "connecting…", "closed");
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { retry = 0; everOpen = true; };
  ws.onmessage = (e) => received(e.data);
  ws.onclose = (e) => {
    // Back off: 0.5 s, 1 s, 2 s ... up to 15 s, with jitter, so a stopped server is not hammered by every tab.
    const delay = Math.min(15000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
    retry = Math.min(retry + 1, 10);
    const why = e.code === 1012 ? "worker restarting" : e.code === 1001 ? "server going away" : "connection lost";
    show("disconnected (" + e.code + ", " + why + "); retrying in " + (delay / 1000).toFixed(1) + " s", "", "sys");
    state("closed (" + e.code + "), retrying…", "closed");
    setTimeout(connect, delay);
  };
}
connect();
$("f").onsubmit = (e) => {
  e.preventDefault();
  const m = $("msg");
  if (!m.value) return;
  outbox.push(m.value); m.value = ""; flush();
};
</script></body></html>
"""


FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#0f172a"/>'
    '<rect x="3" y="8" width="2" height="5" fill="#2dd4bf"/><rect x="7" y="4" width="2" height="9" fill="#2dd4bf"/>'
    '<rect x="11" y="6" width="2" height="7" fill="#60a5fa"/></svg>'
)


async def favicon(request: Request) -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


async def homepage(request: Request) -> HTMLResponse:
    admin = os.environ.get("WSUP_ADMIN_URL")  # set by wsup when its admin endpoint is on
    dashboard = f'<a href="{html.escape(admin)}/" target="_blank">wsup dashboard</a>' if admin else ""
    return HTMLResponse(PAGE % {"pid": os.getpid(), "dashboard": dashboard})


def _slot() -> int | None:
    slot = os.environ.get("WSUP_SLOT", "")
    return int(slot) if slot.isdigit() else None


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def hello(request: Request) -> PlainTextResponse:
    """A minimal endpoint for throughput benchmarks."""
    return PlainTextResponse("hello")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    # First message: which worker holds us (wsup tells each worker its slot, stable across reloads).
    await websocket.send_json({"type": "hello", "pid": os.getpid(), "slot": _slot()})
    # Every "chat" message, published by any worker, is sent to this WebSocket until it closes.
    async with broadcast.join(websocket, CHANNEL):
        async for text in websocket.iter_text():  # ends when the client goes away
            await broadcast.publish(CHANNEL, {"type": "chat", "from": os.getpid(), "text": text[:MAX_LINE]})


asgi = Starlette(
    routes=[
        Route("/", homepage),
        Route("/favicon.svg", favicon),
        Route("/health", health),
        Route("/hello", hello),
        WebSocketRoute("/ws", chat),
    ]
)

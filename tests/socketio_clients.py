"""Socket.IO clients for the tests and benchmarks, each from a chosen source address on 127.0.0.0/8.

- ``sio_client``: python-socketio's ``AsyncClient`` over an aiohttp session bound to the address (the polling
  handshake, then the WebSocket upgrade, as the library does it).
- ``BrowserClient``: what a browser's socket.io-client does, spelled out: the Engine.IO polling handshake, the
  Socket.IO CONNECT over polling, then the WebSocket upgrade (``2probe``/``3probe``/``5``) on a NEW TCP
  connection; by default every polling request is a new TCP connection too, so each one is placed by the server
  side's balancing on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import socketio

OPEN, PING, PONG, MESSAGE, UPGRADE = "0", "2", "3", "4", "5"
RECORD_SEPARATOR = "\x1e"  # Engine.IO 4 joins polling packets with it


def source_address(index: int, base: int = 2) -> str:
    """The index-th client address: 127.0.0.2, .3, ... (127.0.0.1 is where the server listens)."""
    host = base + index
    return f"127.0.{host // 250}.{host % 250 + 1}" if host >= 250 else f"127.0.0.{host}"


def connector(source: str, *, fresh: bool = False) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(local_addr=(source, 0), force_close=fresh, limit=0)


@contextlib.asynccontextmanager
async def sio_client(source: str, **options: Any) -> AsyncIterator[tuple[socketio.AsyncClient, aiohttp.ClientSession]]:
    """An ``AsyncClient`` whose every connection comes from ``source``; disconnected and closed on exit."""
    session = aiohttp.ClientSession(connector=connector(source))
    client = socketio.AsyncClient(http_session=session, **options)
    try:
        yield client, session
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
        await session.close()


class HandshakeError(Exception):
    """A step of the browser-like handshake failed; the message says which and what the server answered."""


class BrowserClient:
    """One browser-like Socket.IO connection (Engine.IO 4): ``await connect()`` then ``emit``/``next_event``."""

    def __init__(self, base_url: str, source: str, *, fresh: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.source = source
        # fresh: every polling request on a new TCP connection (connection churn, a proxy, a POST sent while a
        # long-poll is pending); otherwise polling reuses a keep-alive connection. The upgrade is always new.
        self.fresh = fresh
        self._ws_session: aiohttp.ClientSession | None = None
        self.sid = ""  # the Engine.IO session id
        self.events: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    def _url(self, transport: str) -> str:
        sid = f"&sid={self.sid}" if self.sid else ""
        return f"{self.base_url}/socket.io/?EIO=4&transport={transport}{sid}"

    async def _poll(self, method: str, body: str | None = None) -> str:
        assert self._session is not None
        async with self._session.request(method, self._url("polling"), data=body) as response:
            text = await response.text()
            if response.status != 200:
                raise HandshakeError(f"{method} polling: HTTP {response.status} {text[:80]!r}")
            return text

    async def connect(self, *, upgrade: bool = True) -> None:
        self._session = aiohttp.ClientSession(connector=connector(self.source, fresh=self.fresh))
        opened = await self._poll("GET")
        if not opened.startswith(OPEN):
            raise HandshakeError(f"no OPEN packet: {opened[:80]!r}")
        self.sid = orjson.loads(opened[1:])["sid"]
        if (await self._poll("POST", "40")).lower() != "ok":
            raise HandshakeError("CONNECT over polling was not accepted")
        for _ in range(5):  # the CONNECT answer may follow events the connect handler emitted
            if await self.poll_once():
                break
        else:
            raise HandshakeError("no Socket.IO CONNECT answer in 5 polls")
        if upgrade:
            await self._upgrade()

    async def poll_once(self) -> bool:
        """One long-polling GET (what a client that never upgrades does in a loop): queue its events; True if it
        carried the Socket.IO CONNECT answer. Answers the server's pings."""
        connected = False
        for packet in (await self._poll("GET")).split(RECORD_SEPARATOR):
            if packet.startswith(MESSAGE + "0"):
                connected = True
            elif packet.startswith(MESSAGE + "2"):
                await self.events.put(orjson.loads(packet[2:]))
            elif packet == PING:
                await self._poll("POST", PONG)
        return connected

    async def emit_polling(self, event: str, *args: Any) -> None:
        """An event sent over polling (a client that has not upgraded)."""
        await self._poll("POST", MESSAGE + "2" + orjson.dumps([event, *args]).decode())

    async def connect_websocket_only(self) -> None:
        """``io({transports: ["websocket"]})``: one connection for the whole session, no polling, no upgrade."""
        ws = await self._open_websocket()
        opened = await ws.receive(timeout=10)
        if not str(opened.data).startswith(OPEN):
            raise HandshakeError(f"no OPEN packet: {opened.data!r}")
        self.sid = orjson.loads(opened.data[1:])["sid"]
        await ws.send_str(MESSAGE + "0")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _open_websocket(self) -> aiohttp.ClientWebSocketResponse:
        self._ws_session = aiohttp.ClientSession(connector=connector(self.source, fresh=True))
        try:
            ws = await self._ws_session.ws_connect(self._url("websocket").replace("http", "ws", 1))
        except aiohttp.WSServerHandshakeError as exc:
            raise HandshakeError(f"WebSocket upgrade: HTTP {exc.status}") from None
        self._ws = ws
        return ws

    async def _upgrade(self) -> None:
        ws = await self._open_websocket()
        await ws.send_str(PING + "probe")
        answer = await ws.receive(timeout=10)
        if answer.data != PONG + "probe":
            raise HandshakeError(f"no 3probe answer: {answer.data!r}")
        await ws.send_str(UPGRADE)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data: str = message.data
            if data == PING:
                await self._ws.send_str(PONG)
            elif data.startswith(MESSAGE + "2"):  # a Socket.IO EVENT: 42["name", ...]
                await self.events.put(orjson.loads(data[2:]))

    async def emit(self, event: str, *args: Any) -> None:
        assert self._ws is not None, "connect() first"
        await self._ws.send_str(MESSAGE + "2" + orjson.dumps([event, *args]).decode())

    async def next_event(self, name: str, timeout: float = 10.0) -> list[Any]:
        """The next event called ``name`` (others received meanwhile are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event[0] == name:
                    return event

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        for session in (self._session, self._ws_session):
            if session is not None:
                await session.close()

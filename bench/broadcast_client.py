"""The load generator of the broadcast benchmark: raw asyncio WebSocket clients, cheap enough that 200 subscribers
receiving 160k messages/s fit on the same 2-core machine as the server, and identical for every stack.

Each message is ``"<seq> <monotonic ns at publish>"`` (plus padding for the memory test); a subscriber records the
latency of every message whose ``seq`` is in the current measurement window, and how many it got. Two dialects:
``plain`` (wsup and broadcaster: the text itself) and ``socketio`` (Engine.IO 4 / Socket.IO 5 packets).

Subscribers and the publisher run in their own processes, driven by the coordinator over a ``multiprocessing``
pipe: ``("window", lo, hi)``, ``("count",)``, ``("collect",)``, ``("publish", lo, hi, rate, pad)``, ``("stop",)``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import os
import time
from multiprocessing.connection import Connection
from typing import Any, cast

import uvloop

_SIO_MSG = b'42["msg","'
_SIO_READY = b'42["ready",'


class Stats:
    """What the subscribers of one process saw in the current window."""

    def __init__(self) -> None:
        self.lo = 0
        self.hi = 0
        self.latencies_ns: array.array[int] = array.array("q")

    def reset(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.latencies_ns = array.array("q")


class WsClient(asyncio.Protocol):
    """A minimal RFC 6455 client: text frames only, answers pings, never fragments."""

    def __init__(self, path: str, dialect: str, stats: Stats) -> None:
        self.path = path
        self.dialect = dialect
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = bytearray()
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.count = 0  # messages of the current window received
        self.closed = False

    # --- plumbing -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def send_text(self, payload: bytes) -> None:
        """A masked text frame with an all-zero key: valid, and the payload needs no XOR."""
        size = len(payload)
        if size < 126:
            header = bytes((0x81, 0x80 | size))
        elif size < 65536:
            header = bytes((0x81, 0xFE)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x81, 0xFF)) + size.to_bytes(8, "big")
        assert self.transport is not None
        self.transport.write(header + b"\x00\x00\x00\x00" + payload)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()  # every frame in one read arrived at once
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[:end]:
                raise ConnectionError(f"handshake refused: {bytes(buf[:end])!r}")
            self.upgraded = True
            del buf[: end + 4]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            if opcode == 1:
                self.on_text(payload, now)
            elif opcode == 9:  # ping: answer, or the server closes us after its ping timeout
                assert self.transport is not None
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload)
        if pos:
            del buf[:pos]

    # --- messages -------------------------------------------------------------------------------------------
    def on_text(self, payload: bytes, now: int) -> None:
        if self.dialect == "socketio":
            if payload.startswith(_SIO_MSG):
                self.record(payload[10:-2], now)
            elif payload == b"2":  # Engine.IO ping
                self.send_text(b"3")
            elif payload.startswith(b"0{"):  # Engine.IO open: connect to the main namespace
                self.send_text(b"40")
            elif payload.startswith(_SIO_READY) and not self.ready.done():
                self.ready.set_result(int(payload[len(_SIO_READY) : -1]))
        elif payload.startswith(b"ready ") and not self.ready.done():
            self.ready.set_result(int(payload[6:]))
        else:
            self.record(payload, now)

    def record(self, body: bytes, now: int) -> None:
        first = body.find(b" ")
        second = body.find(b" ", first + 1)
        seq = int(body[:first])
        stats = self.stats
        if stats.lo <= seq < stats.hi:
            self.count += 1
            stats.latencies_ns.append(now - int(body[first + 1 : second] if second > 0 else body[first + 1 :]))

    def publish(self, seq: int, pad: bytes) -> None:
        body = b"%d %d%s" % (seq, time.monotonic_ns(), pad)
        self.send_text(b'42["publish","' + body + b'"]' if self.dialect == "socketio" else body)


def endpoint(dialect: str, role: str) -> str:
    if dialect == "socketio":
        query = "&role=pub" if role == "pub" else ""
        return f"/socket.io/?EIO=4&transport=websocket{query}"
    return f"/{role}"


async def open_clients(
    port: int, dialect: str, role: str, count: int, stats: Stats, concurrency: int
) -> list[WsClient]:
    """Open ``count`` clients, at most ``concurrency`` handshakes (each up to its ``ready``) at a time."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> WsClient:
        async with gate:
            _, client = await loop.create_connection(
                lambda: WsClient(endpoint(dialect, role), dialect, stats), "127.0.0.1", port
            )
            await asyncio.wait_for(client.ready, 30)
            return client

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _serve(conn: Connection, port: int, dialect: str, role: str, count: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    clients = await open_clients(port, dialect, role, count, stats, concurrency)
    conn.send(("ready", [c.ready.result() for c in clients]))
    while True:
        # A thread waits on the pipe: the event loop's reader would make the pipe non-blocking for send() too.
        command: Any = await loop.run_in_executor(None, conn.recv)
        if command[0] == "window":
            stats.reset(command[1], command[2])
            for client in clients:
                client.count = 0
            conn.send(("ok",))
        elif command[0] == "count":
            conn.send(("count", sum(c.count for c in clients)))
        elif command[0] == "collect":
            conn.send(([c.count for c in clients], stats.latencies_ns.tobytes(), sum(c.closed for c in clients)))
        elif command[0] == "publish":
            _, lo, hi, rate, pad = command
            started = time.monotonic()
            await _publish(clients[0], lo, hi, rate, b" " + b"x" * pad if pad else b"")
            conn.send(("done", time.monotonic() - started))
        elif command[0] == "stop":
            for client in clients:
                if client.transport is not None:
                    client.transport.close()
            conn.send(("stopped",))
            return


async def _publish(client: WsClient, lo: int, hi: int, rate: float, pad: bytes) -> None:
    """Publish ``lo..hi-1`` at ``rate`` per second on an absolute schedule (a late tick catches up at once)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seq = lo
    while seq < hi:
        due = min(hi, lo + int((loop.time() - start) * rate) + 1)
        while seq < due:
            client.publish(seq, pad)
            seq += 1
        await asyncio.sleep(max(0.0, start + (seq - lo) / rate - loop.time()))


def process_main(conn: Connection, port: int, dialect: str, role: str, count: int, concurrency: int) -> None:
    """Entry point of a client process (``multiprocessing`` spawn target)."""
    try:
        uvloop.run(_serve(conn, port, dialect, role, count, concurrency))
    except Exception as exc:  # report instead of leaving the coordinator waiting
        conn.send(("error", f"{type(exc).__name__}: {exc}"))

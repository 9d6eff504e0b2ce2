"""One client process of the scale benchmark: thousands of idle WebSockets from one source address.

Run by ``bench/scale.py`` (several at once: a process here is limited to 20,000 file descriptors, and one source
address to ~28,000 ephemeral ports towards one server port). A client is a bare asyncio protocol, not a WebSocket
library: the handshake request, the 101 response, the worker's greeting (``{"type": "hello", "pid": ...}``), then
nothing but answers to the server's pings and close frame. A library client costs ~10x the memory and CPU per
connection, and on 2 cores the clients' CPU is taken from the servers being measured.

Protocol on stdin/stdout (one JSON object per line): the process connects ``--count`` clients at ``--rate`` per
second (0: as fast as it can, ``--parallel`` handshakes in flight) and prints ``{"event": "connected", ...}`` with
the worker pid of each greeting; with ``--reconnect`` a client closed by the server connects again after a randomized,
growing delay, as socket.io-client does by default (1 s ±50%, doubling after each failed attempt up to 5 s), and
every close is recorded. The line ``report`` on stdin prints ``{"event": "report", ...}``; end of input or SIGTERM
closes every connection and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import os
import random
import signal
import socket
import sys
import time
from typing import Any

import orjson

HANDSHAKE_TIMEOUT_S = 60.0
# socket.io-client's defaults (reconnectionDelay, reconnectionDelayMax, randomizationFactor): a reconnect storm of
# real clients is spread this way, and a client retrying at once would measure the client rather than the server.
RECONNECT_DELAY_S, RECONNECT_DELAY_MAX_S, RECONNECT_JITTER = 1.0, 5.0, 0.5
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+
MAX_BUFFER = 4096  # the greeting and a close frame are tiny; anything more is a protocol error here


class Client(asyncio.Protocol):
    __slots__ = ("pool", "transport", "buffer", "upgraded", "pid", "closed_code", "done", "placed")

    def __init__(self, pool: Pool, placed: asyncio.Future[None]) -> None:
        self.pool, self.placed = pool, placed
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.pid = 0
        self.closed_code = 0  # the code of the server's close frame; 0 while none came
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is not a subclass)
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.pool.host.encode(), key)
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_BUFFER:
            self._fail("oversized")
            return
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(head.split(b"\r\n", 1)[0].decode("latin-1")[:40])
                return
            self.upgraded, self.buffer = True, rest
        while len(self.buffer) >= 2:
            opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            if length >= 126:  # never sent by the servers measured here for a greeting or a close
                self._fail("long frame")
                return
            if len(self.buffer) < 2 + length:
                return
            payload, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            if opcode == 0x1 and not self.pid:
                self.pid = int(orjson.loads(payload)["pid"])
                self.pool.greeted(self)
            elif opcode == 0x9:  # the server's keepalive ping: answer as every client library does
                assert self.transport is not None
                self.transport.write(bytes((0x8A, 0x80 | length)) + b"\x00\x00\x00\x00" + payload)
            elif opcode == 0x8:
                self.closed_code = int.from_bytes(payload[:2], "big") if length >= 2 else 1005
                # Answer the close (masked, as a client must) and let the server end the TCP connection.
                assert self.transport is not None
                self.transport.write(b"\x88\x82\x00\x00\x00\x00" + payload[:2])

    def _fail(self, why: str) -> None:
        self.pool.failed(why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def reconnect_delay(attempt: int) -> float:
    """socket.io-client's backoff: the base delay doubled per failed attempt, capped, then ±50% at random."""
    base = min(RECONNECT_DELAY_S * 2.0**attempt, RECONNECT_DELAY_MAX_S)
    return base * random.uniform(1 - RECONNECT_JITTER, 1 + RECONNECT_JITTER)


class Pool:
    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.live: set[Client] = set()
        self.per_pid: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[int] = collections.Counter()  # close code -> count (0: no close frame)
        self.disconnects: collections.Counter[int] = collections.Counter()  # client index -> times disconnected
        self.greetings = 0
        self.stopping = False

    def greeted(self, client: Client) -> None:
        self.greetings += 1
        self.per_pid[client.pid] += 1
        if not client.placed.done():
            client.placed.set_result(None)

    def failed(self, why: str) -> None:
        self.errors[why] += 1

    async def open(self, placed: asyncio.Future[None]) -> Client:
        loop = asyncio.get_running_loop()
        client = Client(self, placed)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Without IP_BIND_ADDRESS_NO_PORT, bind() to (source, 0) searches the whole ephemeral range for a port
            # no other socket on that address uses: 6 ms a call once ~15,000 are taken (strace), which capped a
            # client process at ~45 connects/s and left the server's closes unread for seconds. With it, the port
            # is picked at connect(), per destination, in constant time.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setblocking(False)
            sock.bind((self.source, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), HANDSHAKE_TIMEOUT_S)
            await loop.create_connection(lambda: client, sock=sock)
        except BaseException:
            sock.close()
            raise
        return client

    async def hold(self, index: int, reconnect: bool, placed: asyncio.Future[None]) -> None:
        """One client for the life of the process: connect, wait for the greeting, stay until closed. ``placed``
        is set once the first attempt was greeted or failed."""
        attempt = 0  # failed attempts since the last greeting
        while not self.stopping:
            try:
                client = await self.open(placed)
            except (OSError, TimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
                if not placed.done():
                    placed.set_result(None)
                if not reconnect:
                    return
                attempt += 1
                await asyncio.sleep(reconnect_delay(attempt))
                continue
            self.live.add(client)
            await client.done
            self.live.discard(client)
            if not placed.done():
                placed.set_result(None)
            if self.stopping:
                return
            if client.pid:
                self.per_pid[client.pid] -= 1
                self.closes[client.closed_code] += 1
                self.disconnects[index] += 1
                attempt = 0
            else:
                self.errors["closed before the greeting"] += 1
                attempt += 1
            if not reconnect:
                return
            await asyncio.sleep(reconnect_delay(attempt))

    def report(self) -> dict[str, Any]:
        return {
            "event": "report",
            "source": self.source,
            "live": sum(1 for client in self.live if client.pid),
            "per_pid": {str(pid): count for pid, count in self.per_pid.items() if count},
            "errors": dict(self.errors),
            "closes": {str(code): count for code, count in self.closes.items()},
            "disconnects": {str(times): n for times, n in collections.Counter(self.disconnects.values()).items()},
        }


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(args.host, args.port, args.source)
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    gate = asyncio.Semaphore(args.parallel)
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        async with gate:  # held until this client is greeted (or failed): at most --parallel handshakes at once
            placed: asyncio.Future[None] = loop.create_future()
            tasks.append(asyncio.create_task(pool.hold(index, args.reconnect, placed)))
            await placed

    async def progress() -> None:  # to stderr, for whoever watches a long run
        while True:
            await asyncio.sleep(5.0)
            print(f"{args.source}: {pool.greetings} greeted, errors {dict(pool.errors)}", file=sys.stderr, flush=True)

    progress_task = asyncio.create_task(progress())
    launches = []
    for index in range(args.count):
        launches.append(asyncio.create_task(one(index)))
        if interval:
            await asyncio.sleep(interval)
    await asyncio.gather(*launches)
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while pool.greetings + sum(pool.errors.values()) < args.count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    seconds = time.monotonic() - started
    progress_task.cancel()
    print(orjson.dumps({**pool.report(), "event": "connected", "seconds": round(seconds, 3)}).decode(), flush=True)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        line_task = asyncio.ensure_future(reader.readline())
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait([line_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if not line_task.done() or not (line := line_task.result()):
            line_task.cancel()
            break
        if line.strip() == b"report":
            print(orjson.dumps(pool.report()).decode(), flush=True)
    pool.stopping = True
    for client in list(pool.live):
        if client.transport is not None:
            client.transport.abort()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="idle WebSocket clients from one source address")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.1", help="the clients' source address")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="new connections per second (0: as fast as can)")
    parser.add_argument("--parallel", type=int, default=200, help="handshakes in flight at once")
    parser.add_argument("--reconnect", action="store_true", help="connect again when the server closes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(parse()))

"""Clients of the several-hosts benchmark (bench/multihost.py), one process per simulated host.

Each process holds the host's subscribers (``/sub`` of ``broadcast_apps.wsup_app``) and one publisher (``/pub``),
all connected straight to that host's address. On ``("step", rate, seconds)`` its publisher sends ``rate`` msg/s
of ``"<publisher> <seq> <unix time>"``; after a grace period it answers with what its subscribers received:
per publisher and sequence, how many of them got it and when the first did, and every latency.

``dialect="socketio"`` speaks Socket.IO 4 over a raw WebSocket to the Node peer of ``multihost_socketio.js``
(Engine.IO open, ``40`` to join the namespace, ``42["msg", ...]`` events, ``3`` for every ping).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

GRACE_S = 2.0


class HostClients:
    def __init__(self, address: str, port: int, publisher: int, subscribers: int, dialect: str = "wsup") -> None:
        self.base = f"ws://{address}:{port}"
        self.dialect = dialect
        self.publisher_id = publisher
        self.count = subscribers
        self.subs: list[ClientConnection] = []
        self.pub: ClientConnection | None = None
        self.received: dict[tuple[int, int], list[float]] = defaultdict(list)  # (publisher, seq) -> receive times
        self.latencies: list[float] = []
        self.local_latencies: list[float] = []  # of this host's own publisher: the bus without the bridge
        self.remote_latencies: list[float] = []  # of the other hosts' publishers: through Redis
        self.recording = False

    async def connect(self) -> None:
        gate = asyncio.Semaphore(20)

        async def one() -> ClientConnection:
            async with gate:
                return await self._open("sub")

        self.subs = list(await asyncio.gather(*(one() for _ in range(self.count))))
        self.pub = await self._open("pub")
        if self.dialect == "socketio":
            asyncio.create_task(self._answer_pings(self.pub))
        for ws in self.subs:
            asyncio.create_task(self._read(ws))

    async def _open(self, role: str) -> ClientConnection:
        if self.dialect == "wsup":
            ws = await connect(f"{self.base}/{role}", open_timeout=60, ping_interval=None, max_queue=None)
            assert str(await ws.recv()).startswith("ready")
            return ws
        url = f"{self.base}/socket.io/?EIO=4&transport=websocket&role={role}"
        ws = await connect(url, open_timeout=60, ping_interval=None, max_queue=None)
        assert str(await ws.recv()).startswith("0")  # Engine.IO open
        await ws.send("40")
        while not str(await ws.recv()).startswith('42["ready"'):
            pass
        return ws

    async def _answer_pings(self, ws: ClientConnection) -> None:
        async for text in ws:
            if text == "2":
                await ws.send("3")

    async def _read(self, ws: ClientConnection) -> None:
        socketio = self.dialect == "socketio"
        async for frame in ws:
            now = time.time()
            text = str(frame)
            if socketio:
                if text == "2":
                    await ws.send("3")
                    continue
                if not text.startswith('42["msg","'):
                    continue
                text = text[10:-2]
            publisher, seq, sent = text.split(" ")
            if self.recording:
                self.received[(int(publisher), int(seq))].append(now)
                latency = now - float(sent)
                self.latencies.append(latency)
                (self.local_latencies if int(publisher) == self.publisher_id else self.remote_latencies).append(latency)

    async def step(self, rate: float, seconds: float) -> dict[str, Any]:
        assert self.pub is not None
        self.received.clear()
        self.latencies = []
        self.local_latencies = []
        self.remote_latencies = []
        self.recording = True
        sent_at: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds)
        for seq in range(1, total + 1):
            delay = start + (seq - 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            sent_at[seq] = now
            body = f"{self.publisher_id} {seq} {now:.6f}"
            await self.pub.send(f'42["publish","{body}"]' if self.dialect == "socketio" else body)
        behind = loop.time() - (start + seconds)
        await asyncio.sleep(GRACE_S)
        self.recording = False
        return {
            "publisher": self.publisher_id,
            "sent": sent_at,
            "behind_s": behind,
            "received": {key: (len(times), min(times)) for key, times in self.received.items()},
            "latencies": self.latencies,
            "local_latencies": self.local_latencies,
            "remote_latencies": self.remote_latencies,
        }


def process_main(
    address: str, port: int, publisher: int, subscribers: int, conn: Connection, dialect: str = "wsup"
) -> None:
    async def main() -> None:
        clients = HostClients(address, port, publisher, subscribers, dialect)
        await clients.connect()
        conn.send("ready")
        while True:
            command = await asyncio.to_thread(conn.recv)
            if command[0] == "stop":
                return
            conn.send(await clients.step(command[1], command[2]))

    asyncio.run(main())

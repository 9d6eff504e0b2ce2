"""10,000 hostile frames on each ZeroMQ endpoint of a running instance, with clients connected (defects 3 and 4):
malformed JSON, wrong types, negative, NaN and 2**64-1 values, bus sequence jumps from made-up origins, and 10 MB
frames. Every process stays up, no worker is killed as silent past --heartbeat-timeout, every frame that reaches
wsup is counted, and the supervisor's memory does not grow."""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq

from tests.test_bus import BUS_APP, clients_on_every_worker, close_clients
from tests.wsup_harness import ROOT, Instance, wait_until

FRAMES = 10_000
BATCH = 1_000
HEARTBEAT_TIMEOUT = 3.0
_REPORT = (
    b'{"v":1,"t":"report","pid":%d,"slot":0,"generation":1,"seq":1,"http":%s,"websocket":0,"in_flight":0,'
    b'"requests":0,"websocket_sessions":0,"loop_lag_ms":0.0,"draining":false,"dropped_reports":0}'
)
STATS_GARBAGE = [
    b"not json",
    b"[]",
    b'{"v":1,"t":"report"}',
    _REPORT % (1, b"-1"),
    _REPORT % (1, b"NaN"),
    _REPORT % (1, b"18446744073709551615"),
    _REPORT % (1, b'"many"'),
    _REPORT % (-5, b"1"),
]
CONTROL_GARBAGE = [b"{", b'{"v":1,"t":"request","id":7,"cmd":"status"}', b'{"v":1,"t":"reply","id":"x","status":"ok"}']


def _header(kind: int, origin: int, seq: int, version: int = 1) -> bytes:
    return struct.pack("!BBHIQQ", version, kind, 0, origin, seq, 0)


BUS_GARBAGE = [
    [b"room\x00"],
    [b"room\x00", b"short", b"x"],
    [b"room\x00", _header(1, 1, 1, version=9), b"x"],
    [b"room\x00", _header(77, 1, 1), b"x"],
    [b"room\x00", _header(1, 1, 1), b"\xff\xfe"],
]


def _socket(context: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str) -> zmq.Socket[bytes]:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # the flood is sent, not dropped on our side
    sock.connect(endpoint)
    return sock


def _totals(wsup: Instance) -> tuple[dict[str, Any], dict[str, int]]:
    status = wsup.status()
    return status["ipc"], status["totals"]["bus"]


def test_ten_thousand_hostile_frames_per_endpoint(start_wsup: Callable[..., Instance], run_dir: Path) -> None:
    wsup = start_wsup(*BUS_APP, "-i", "2", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT))
    status = wsup.wait_ready(2)
    pids = {w["pid"] for w in status["workers"]}
    supervisor = psutil.Process(status["supervisor"]["pid"])
    directory = run_dir / wsup.name
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    async def scenario() -> None:
        clients = await clients_on_every_worker(f"{wsup.ws_url}/ws", 2, 4)
        sockets: list[zmq.Socket[bytes]] = []
        try:
            await asyncio.gather(*(c.cmd(op="join", channels=["room"]) for c in clients))
            stats = _socket(context, zmq.PUSH, f"ipc://{directory}/stats")
            ctl = _socket(context, zmq.DEALER, f"ipc://{directory}/control")
            bus = _socket(context, zmq.PUB, f"ipc://{directory}/bus-in")
            sockets += [stats, ctl, bus]

            # A new PUB drops what it sends before it hears the proxy's subscription: send until it is heard.
            # (ZeroMQ sockets stay on this thread; only the CLI calls go to another.)
            heard_by = time.monotonic() + 20
            while (await asyncio.to_thread(_totals, wsup))[1].get("malformed", 0) < 2:
                assert time.monotonic() < heard_by, "the rogue publisher was never heard"
                bus.send_multipart(BUS_GARBAGE[0])
                await asyncio.sleep(0.2)
            ipc0, bus0 = await asyncio.to_thread(_totals, wsup)
            rss0 = supervisor.memory_info().rss

            # 10 MB frames, from a process of its own (see huge_frames): each endpoint refuses every one of them
            # (ZMQ_MAXMSGSIZE) by cutting the sender off, before reading the frame into memory.
            attacker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.hostile.huge_frames", str(directory), "10",
                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            refused = orjson.loads((await asyncio.wait_for(attacker.communicate(), 300))[0])
            assert refused == {"stats": 10, "control": 10, "bus-in": 10, "bus-out": 10}

            sent_bus_garbage = jumps = 0
            for start in range(0, FRAMES, BATCH):
                for n in range(start, start + BATCH):
                    stats.send(STATS_GARBAGE[n % len(STATS_GARBAGE)])
                    ctl.send_multipart([b"a", b"b"] if n % 7 == 0 else [CONTROL_GARBAGE[n % len(CONTROL_GARBAGE)]])
                    if n % 5 == 0:  # a made-up origin: its first message, then a jump to 2**64-1
                        seq = 1 if n % 10 == 0 else (1 << 64) - 1
                        jumps += seq != 1
                        bus.send_multipart([b"room\x00", _header(1, 1_000_000 + n // 10, seq), b"{}"])
                    else:
                        bus.send_multipart(BUS_GARBAGE[n % len(BUS_GARBAGE)])
                        sent_bus_garbage += 1

                def batch_counted(end: int = start + BATCH, garbage: int = sent_bus_garbage) -> bool:
                    ipc, totals = _totals(wsup)
                    return (
                        ipc["malformed_stats"] - ipc0["malformed_stats"] == end
                        and ipc["malformed_control"] - ipc0["malformed_control"] == end
                        and totals["malformed"] - bus0["malformed"] == 2 * garbage
                    )

                await asyncio.to_thread(wait_until, batch_counted, 60, 0.2, f"frames up to {start + BATCH} counted")
            _, totals = await asyncio.to_thread(_totals, wsup)
            assert totals.get("seq_jumps", 0) - bus0.get("seq_jumps", 0) == 2 * jumps
            assert totals["lost"] == bus0["lost"]
            grown = supervisor.memory_info().rss - rss0
            assert grown < 5 << 20, f"the supervisor grew by {grown / 2**20:.1f} MiB"

            # Past the heartbeat timeout: no worker was silenced by the flood, so none is replaced.
            quiet_until = time.monotonic() + 2 * HEARTBEAT_TIMEOUT
            while time.monotonic() < quiet_until:
                status = await asyncio.to_thread(wsup.status)
                assert {w["pid"] for w in status["workers"]} == pids
                assert status["totals"]["restarts"] == 0
                await asyncio.sleep(0.5)
            await clients[0].cmd(op="publish", channel="room", tag="after")
            await asyncio.to_thread(wait_until, lambda: all(c.tagged("after") for c in clients), 20, 0.1, "delivery")
        finally:
            for sock in sockets:
                sock.close(linger=0)
            await close_clients(clients)

    try:
        asyncio.run(scenario())
    finally:
        context.term()
    assert supervisor.is_running()

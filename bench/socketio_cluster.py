"""python-socketio on 4 workers: wsup (--balance ip-hash, WsupManager) against uvicorn --workers 4, and WsupManager
against python-socketio's AsyncRedisManager with a real redis-server.

    .venv/bin/python bench/socketio_cluster.py [--quick] [--out results.json]

1. Browser-like clients (polling handshake, then the WebSocket upgrade on a new TCP connection) from many source
   addresses: how many connect. Then polling-only clients that keep polling (each poll a new TCP connection)
   while the room gets a message a second: how many keep working.
2. Spread: clients from 50 addresses, max/min per worker under ip-hash.
3. Room emits at a modest rate to every client: deliveries lost or duplicated.
4. Cost: a burst of emits to the room as fast as one worker sends them: deliveries/s and server CPU per
   delivery (Redis's CPU included), WsupManager against AsyncRedisManager, same app and clients.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from broadcast_servers import Running, start_redis  # noqa: E402
from server_process import free_port  # noqa: E402
from socketio_servers import cpu_s, start_uvicorn, start_wsup  # noqa: E402

from tests.socketio_clients import BrowserClient, HandshakeError, source_address  # noqa: E402

WORKERS = 4


class Receiver(BrowserClient):
    """A browser-like client that only counts the room's ``m`` messages (by tag) and notes its worker."""

    def __init__(self, base_url: str, source: str, *, fresh: bool = False) -> None:
        super().__init__(base_url, source, fresh=fresh)
        self.worker = 0
        self.got: collections.Counter[tuple[str, int]] = collections.Counter()

    def note(self, event: list[Any]) -> None:
        if event[0] == "welcome":
            self.worker = event[1]["worker"]
        elif event[0] == "m":
            self.got[(event[1]["tag"], event[1]["seq"])] += 1

    async def settle(self) -> None:
        while not self.events.empty():
            self.note(self.events.get_nowait())

    def count(self, tag: str) -> tuple[int, int]:
        """(distinct messages of ``tag`` received, duplicates)."""
        mine = [n for (t, _), n in self.got.items() if t == tag]
        return len(mine), sum(n - 1 for n in mine)


async def connect_all(
    url: str, count: int, addresses: int, *, upgrade: bool = True, fresh: bool = False
) -> tuple[list[Receiver], int]:
    """Browsers: polling on a keep-alive connection, the upgrade on a new one (``fresh``: every request new)."""
    clients = [Receiver(url, source_address(i % addresses), fresh=fresh) for i in range(count)]
    results = await asyncio.gather(*(c.connect(upgrade=upgrade) for c in clients), return_exceptions=True)
    ok = [c for c, r in zip(clients, results, strict=True) if not isinstance(r, BaseException)]
    for client, result in zip(clients, results, strict=True):
        if isinstance(result, BaseException):
            await client.close()
    return ok, len(clients) - len(ok)


async def emitter_for(url: str, source: str) -> BrowserClient:
    """The client that asks for emits: WebSocket only, so it connects whatever the balancing."""
    emitter = BrowserClient(url, source)
    await emitter.connect_websocket_only()
    return emitter


async def close_all(clients: list[Receiver]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def burst(
    emitter: BrowserClient, count: int, tag: str, per_tick: int = 1, tick_s: float = 0.0, room: str = "bench"
) -> None:
    await emitter.emit("burst", {"count": count, "tag": tag, "per_tick": per_tick, "tick_s": tick_s, "room": room})


async def wait_delivered(clients: list[Receiver], tag: str, count: int, timeout: float) -> float:
    """Seconds until every client has ``count`` messages of ``tag`` (or the timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for client in clients:
            await client.settle()
        if all(client.count(tag)[0] >= count for client in clients):
            break
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def connect_scenario(url: str, clients: int, addresses: int, poll_s: float) -> dict[str, Any]:
    browsers, failed = await connect_all(url, clients, addresses)
    result: dict[str, Any] = {"browser_like": f"{len(browsers)}/{clients}"}
    await close_all(browsers)
    # Polling-only clients: each request on a new TCP connection (what connection churn, a proxy, or a POST
    # sent while the long-poll GET is pending all do).
    pollers, poll_failed = await connect_all(url, clients, addresses, upgrade=False, fresh=True)
    emitter = await emitter_for(url, source_address(addresses))
    kept = 0
    try:
        ticks = max(1, int(poll_s))
        await burst(emitter, ticks, "poll", tick_s=1.0)

        async def keep_polling(client: Receiver) -> bool:
            deadline = time.monotonic() + poll_s + 2
            try:
                while time.monotonic() < deadline and client.count("poll")[0] < ticks:
                    await asyncio.wait_for(client.poll_once(), 30)
                    await client.settle()
            except (HandshakeError, TimeoutError, OSError):
                return False
            return client.count("poll")[0] == ticks

        kept = sum(await asyncio.gather(*(keep_polling(c) for c in pollers)))
    finally:
        await emitter.close()
        await close_all(pollers)
    result["polling_only"] = f"{kept}/{clients} kept working for {poll_s:g}s ({len(pollers)} connected)"
    return result


async def room_scenario(url: str, clients: int, addresses: int, rate: int, seconds: float) -> dict[str, Any]:
    receivers, failed = await connect_all(url, clients, addresses)
    emitter = await emitter_for(url, source_address(addresses))
    try:
        for client in receivers:
            await client.settle()
        per_worker = collections.Counter(c.worker for c in receivers)
        counts = sorted(per_worker.values())
        total = int(rate * seconds)
        per_tick = max(1, rate // 20)
        await burst(emitter, total, "rate", per_tick=per_tick, tick_s=per_tick / rate)
        await wait_delivered(receivers, "rate", total, seconds + 15)
        received = [c.count("rate") for c in receivers]
        return {
            "clients": len(receivers),
            "connect_failed": failed,
            "per_worker": counts,
            "max_min": round(counts[-1] / counts[0], 2) if len(counts) == WORKERS else None,
            "emits": total,
            "rate": rate,
            "lost": sum(total - got for got, _ in received),
            "duplicates": sum(dup for _, dup in received),
        }
    finally:
        await emitter.close()
        await close_all(receivers)


async def cost_scenario(running: Running, clients: int, addresses: int, emits: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{running.port}"
    receivers, _ = await connect_all(url, clients, addresses)
    emitter = await emitter_for(url, source_address(addresses))
    try:
        cpu0 = running.cpu_s()
        await burst(emitter, emits, "cost")
        seconds = await wait_delivered(receivers, "cost", emits, 120)
        cpu = running.cpu_s() - cpu0
        deliveries = sum(c.count("cost")[0] for c in receivers)
        return {
            "clients": len(receivers),
            "emits": emits,
            "deliveries": deliveries,
            "expected": emits * len(receivers),
            "seconds": round(seconds, 2),
            "deliveries_per_s": round(deliveries / seconds),
            "cpu_us_per_delivery": round(cpu / max(deliveries, 1) * 1e6, 1),
        }
    finally:
        await emitter.close()
        await close_all(receivers)


async def overhead_scenario(running: Running, emits: int, redis_pid: int | None) -> dict[str, Any]:
    """The manager's own cost: emits to a room nobody is in, so no worker delivers anything; every other worker
    still receives and handles each one. CPU of the whole server side (Redis included) per emit."""
    emitter = await emitter_for(f"http://127.0.0.1:{running.port}", source_address(60))

    def cpu_now() -> float:
        return running.cpu_s() + (cpu_s(redis_pid) if redis_pid else 0.0)

    try:
        # The idle cost (heartbeats, reports) over the same span is subtracted: it is not the emits'.
        idle0, idle_start = cpu_now(), time.monotonic()
        await asyncio.sleep(1.0)
        idle_per_s = (cpu_now() - idle0) / (time.monotonic() - idle_start)
        cpu0, start = cpu_now(), time.monotonic()
        await burst(emitter, emits, "void", room="nobody-is-here")
        done = await emitter.next_event("done", timeout=300)
        await asyncio.sleep(1.0)  # the other workers handle what is still queued for them
        cpu = cpu_now() - cpu0 - idle_per_s * (time.monotonic() - start)
    finally:
        await emitter.close()
    seconds = float(done[1]["seconds"])
    return {
        "emits": emits,
        "sender_emits_per_s": round(emits / seconds),
        "cpu_us_per_emit": round(cpu / emits * 1e6, 1),
        "idle_cores": round(idle_per_s, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="wsup-sio-bench"))
    results: dict[str, Any] = {"quick": args.quick, "logs": str(logs)}
    redis_port = free_port()
    redis = start_redis(redis_port, logs / "redis.log")
    redis_url = f"redis://127.0.0.1:{redis_port}"
    try:
        # uvicorn gets python-socketio's own answer for several workers (AsyncRedisManager), so only stickiness
        # differs; wsup needs no Redis.
        for name, start, manager in (("wsup", start_wsup, "wsup"), ("uvicorn", start_uvicorn, "redis")):
            if "connect" not in args.parts and (name != "wsup" or "room" not in args.parts):
                continue
            server = start(free_port(), logs / f"{name}.log", manager, redis_url)
            try:
                url = f"http://127.0.0.1:{server.port}"
                if "connect" in args.parts:
                    scenario = connect_scenario(url, args.clients, args.addresses, args.poll_s)
                    results[f"connect/{server.name}"] = asyncio.run(scenario)
                if name == "wsup" and "room" in args.parts:
                    for rate in args.rate:
                        scenario = room_scenario(url, 200, 50, rate, args.seconds)
                        results[f"room/wsup/{rate}"] = asyncio.run(scenario)
            finally:
                server.stop()
        for round_ in range(args.repeat if "cost" in args.parts else 0):
            for manager in ("wsup", "redis"):
                server = start_wsup(free_port(), logs / f"cost-{manager}.log", manager, redis_url)
                redis_cpu = cpu_s(redis.pid)
                try:
                    result = asyncio.run(cost_scenario(server, 200, 50, args.emits))
                    if manager == "redis":  # Redis's CPU is part of the Redis manager's cost
                        extra = (cpu_s(redis.pid) - redis_cpu) / max(result["deliveries"], 1) * 1e6
                        result["redis_cpu_us_per_delivery"] = round(extra, 1)
                        result["cpu_us_per_delivery"] = round(result["cpu_us_per_delivery"] + extra, 1)
                    redis_pid = redis.pid if manager == "redis" else None
                    result["overhead"] = asyncio.run(overhead_scenario(server, args.emits * 10, redis_pid))
                finally:
                    server.stop()
                results[f"cost/{manager}/{round_}"] = result
    finally:
        if redis.poll() is None:
            redis.terminate()
            redis.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (10 s of polling, 5 s of emits)")
    parser.add_argument("--clients", type=int, default=50, help="browser-like and polling-only clients")
    parser.add_argument("--addresses", type=int, default=25, help="source addresses they come from")
    parser.add_argument("--poll-s", type=float, default=30.0, help="how long polling-only clients keep polling")
    parser.add_argument("--rate", type=int, nargs="+", default=[20, 50], help="room emits/s to 200 clients")
    parser.add_argument("--parts", default="connect,room,cost", help="which parts to run (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the cost comparison")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the room emits go on")
    parser.add_argument("--emits", type=int, default=200, help="emits of the cost burst")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    # A TERM (a timeout, a killed run) unwinds like Ctrl-C: every server and redis-server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    args.parts = set(args.parts.split(","))
    if args.quick:
        args.poll_s, args.seconds = 10.0, 5.0
    results = run(args)
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

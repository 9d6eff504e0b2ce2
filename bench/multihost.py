"""Several hosts on one machine (issue 13): three wsup instances on 127.0.0.2, .3 and .4 (same port, one worker
each), one real redis-server bridging their buses, one real HAProxy on 127.0.0.1 in front (leastconn + agent-check).

Usage, from the repository root (needs redis-server and haproxy: ``apt-get install -y redis-server haproxy``)::

    .venv/bin/python bench/multihost.py [--phases broadcast,outage,balance,drain] [--step-s 4] [--rates 30,60,...]

- broadcast: 100 subscribers per host, a publisher on every host; the total rate steps up until a step loses a
  message, has a p99 of 100 ms or more, or a publisher falls behind. Reports the highest step that passed.
- outage: the same clients at a steady rate; Redis is killed for 5 s and restarted. Reports local delivery during
  the outage, how long after Redis was back the first cross-host message arrived, and the messages not relayed as
  the bridges counted them against those the subscribers missed.
- balance: host A holds 200 WebSockets that did not come through HAProxy; 300 more arrive through HAProxy. With
  agent-check weights, then with leastconn alone. Reports WebSockets per host.
- ``--stack socketio``: the broadcast phase against Socket.IO 4 with @socket.io/redis-adapter, one plain ``node``
  per host (``bench/multihost_socketio.js``; packages installed from npm into ``~/.cache/wsup-bench/node-mh``).
- ``--stack python-socketio``: the same against python-socketio's ``AsyncServer`` + ``AsyncRedisManager``, one
  uvicorn per host (``bench/multihost_pysio.py``; ``.venv/bin/pip install python-socketio``).
- drain: 200 clients through HAProxy all on A (B and C drained while they connect), B and C resumed, then
  ``wsup drain --move-websockets`` on A. Reports where they went, failed connects, disconnects per moved client,
  what A holds at the end, and where new connections go after ``wsup resume``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from multihost_clients import process_main  # noqa: E402
from multihost_servers import ADDRESSES, Hosts, NodeHosts, PySocketIOHosts  # noqa: E402

from tests.multihost import HAProxy, RedisServer, Roamer, agent_answer, until  # noqa: E402
from tests.wsup_harness import wait_until  # noqa: E402

AnyHosts = Hosts | NodeHosts | PySocketIOHosts


@contextlib.contextmanager
def host_clients(
    hosts: Hosts | NodeHosts | PySocketIOHosts, per_host: int, dialect: str = "wsup"
) -> Iterator[list[Any]]:
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for index, address in enumerate(ADDRESSES):
        mine, theirs = context.Pipe()
        args = (address, hosts.port, index, per_host, theirs, dialect)
        proc = context.Process(target=process_main, args=args, daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise RuntimeError("client process did not connect")
        yield pipes
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def run_step(pipes: list[Any], rate: float, seconds: float) -> list[dict[str, Any]]:
    for pipe in pipes:
        pipe.send(("step", rate / len(pipes), seconds))
    return [pipe.recv() for pipe in pipes]


def summarize(results: list[dict[str, Any]], per_host: int) -> dict[str, Any]:
    sent = sum(len(r["sent"]) for r in results)
    expected = sent * per_host * len(results)
    delivered = sum(count for r in results for count, _ in r["received"].values())
    latencies = sorted(x for r in results for x in r["latencies"])
    p = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else None
    local = sorted(x for r in results for x in r["local_latencies"])
    remote = sorted(x for r in results for x in r["remote_latencies"])
    return {
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "p50_ms": round(p(0.5), 1) if p else None,
        "p99_ms": round(p(0.99), 1) if p else None,
        "same_host_p50_p99_ms": _percentiles(local),
        "other_host_p50_p99_ms": _percentiles(remote),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "behind_s": round(max(r["behind_s"] for r in results), 2),
    }


def _percentiles(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    middle, tail = values[len(values) // 2], values[min(len(values) - 1, int(0.99 * len(values)))]
    return (round(middle * 1000, 1), round(tail * 1000, 1))


def phase_broadcast(hosts: AnyHosts, rates: list[float], step_s: float, dialect: str = "wsup") -> list[dict[str, Any]]:
    rows = []
    with host_clients(hosts, 100, dialect) as pipes:
        for rate in rates:
            row = {"rate": rate, **summarize(run_step(pipes, rate, step_s), 100)}
            rows.append(row)
            print(f"broadcast ({dialect})", row, flush=True)
            if row["lost"] or (row["p99_ms"] or 0) >= 100 or row["behind_s"] > 0.5:
                break
    return rows


def phase_outage(hosts: Hosts, redis: RedisServer, rate: float) -> dict[str, Any]:
    with host_clients(hosts, 100) as pipes:
        before = [hosts.status(i)["bridge"]["dropped"] for i in range(3)]
        for pipe in pipes:
            pipe.send(("step", rate / 3, 14.0))
        time.sleep(3.0)
        killed = time.time()
        redis.stop()
        time.sleep(5.0)
        redis.start()
        back = time.time()
        results = [pipe.recv() for pipe in pipes]
        after = [hosts.status(i)["bridge"] for i in range(3)]
    local_outage = [0, 0]  # [delivered, expected] to the publisher's own host while Redis was away
    missed_cross: set[tuple[int, int]] = set()  # (publisher, seq) that some other host's subscribers did not get
    first_cross_after = None
    for receiver, result in enumerate(results):
        for (publisher, _seq), (_count, first) in result["received"].items():
            if publisher != receiver and first >= back:
                first_cross_after = first if first_cross_after is None else min(first_cross_after, first)
        for publisher, other in enumerate(results):
            for seq, at in other["sent"].items():
                count = result["received"].get((publisher, seq), (0, 0.0))[0]
                if publisher == receiver and killed <= at <= back:
                    local_outage[0] += count
                    local_outage[1] += 100
                elif publisher != receiver and count < 100:
                    missed_cross.add((publisher, seq))
    counted = sum(b["dropped"] for b in after) - sum(before)
    row = {
        "rate": rate,
        "local_delivered_during_outage": f"{local_outage[0]}/{local_outage[1]}",
        "cross_host_resumed_after_s": round(first_cross_after - back, 2) if first_cross_after else None,
        "messages_missed_by_a_remote_host": len(missed_cross),
        "not_relayed_counted_by_bridges": counted,
        "reconnects": [b["reconnects"] for b in after],
    }
    print("outage", row, flush=True)
    return row


async def _open(url: str, count: int, concurrency: int = 20, source: str | None = None) -> list[Any]:
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(concurrency)
    local: dict[str, Any] = {"local_addr": (source, 0)} if source else {}

    async def one() -> Any:
        async with gate:
            ws = await connect(url, open_timeout=60, ping_interval=None, **local)
            await ws.recv()
            return ws

    return list(await asyncio.gather(*(one() for _ in range(count))))


def phase_balance(hosts: Hosts, agent: bool) -> dict[str, Any]:
    haproxy = HAProxy([(a, hosts.port, hosts.agent_port if agent else None) for a in ADDRESSES], inter_ms=1000)
    haproxy.start()
    try:
        wait_until(lambda: all(s["status"] == "UP" for s in haproxy.servers().values()), 30, 0.2, "UP")

        async def scenario() -> list[int]:
            # From another address than HAProxy's, as clients on other machines would be.
            direct = await _open(f"ws://{ADDRESSES[0]}:{hosts.port}/sub", 200, source="127.0.0.9")
            if agent:  # the agent's next answers carry A's 200
                await asyncio.to_thread(wait_until, lambda: haproxy.servers()["h0"]["weight"] != "100", 30, 0.2)
            through = []
            for _ in range(30):  # 300 arrivals over ~3 s, as clients arrive, not in one burst
                through += await _open(f"ws://127.0.0.1:{haproxy.port}/sub", 10)
                await asyncio.sleep(0.1)
            counts = await asyncio.to_thread(hosts.websockets)
            for ws in direct + through:
                await ws.close()
            return counts

        counts = asyncio.run(scenario())
    finally:
        haproxy.stop()
    mean = statistics.mean(counts)
    row = {"agent": agent, "per_host": counts, "max_dev_pct": round(max(abs(c - mean) for c in counts) / mean * 100)}
    print("balance", row, flush=True)
    wait_until(lambda: sum(hosts.websockets()) == 0, 60, 0.5, "clients gone")
    return row


def phase_drain(hosts: Hosts) -> dict[str, Any]:
    haproxy = HAProxy([(a, hosts.port, hosts.agent_port) for a in ADDRESSES], inter_ms=1000).start()
    try:
        wait_until(lambda: all(s["status"] == "UP" for s in haproxy.servers().values()), 30, 0.2, "UP")
        for index in (1, 2):
            hosts.cli(index, "drain")
        wait_until(lambda: [s["status"][:5] for s in haproxy.servers().values()] == ["UP", "DRAIN", "DRAIN"], 30, 0.2)
        pids_a = {w["pid"] for w in hosts.status(0)["workers"]}

        async def scenario() -> dict[str, Any]:
            stop = asyncio.Event()
            roamers = [Roamer(f"ws://127.0.0.1:{haproxy.port}/sub") for _ in range(200)]
            tasks = []
            for roamer in roamers:
                tasks.append(asyncio.create_task(roamer.run(stop)))
                await asyncio.sleep(0.01)
            await until(lambda: all(r.pids for r in roamers), "200 clients on A", 120)
            on_a = sum(1 for r in roamers if r.pids[0] in pids_a)
            for index in (1, 2):
                await asyncio.to_thread(hosts.cli, index, "resume")
            await asyncio.to_thread(
                wait_until, lambda: [s["status"] for s in haproxy.servers().values()] == ["UP"] * 3, 30, 0.2
            )
            started = time.monotonic()
            await asyncio.to_thread(hosts.cli, 0, "drain", "--move-websockets", "--window", "5")
            await until(lambda: all(len(r.pids) >= 2 for r in roamers), "every client moved", 120)
            moved_s = time.monotonic() - started
            counts_after = await asyncio.to_thread(hosts.websockets)
            await asyncio.to_thread(hosts.cli, 0, "resume")
            await asyncio.to_thread(wait_until, lambda: haproxy.servers()["h0"]["status"] == "UP", 30, 0.2)
            newcomers = await _open(f"ws://127.0.0.1:{haproxy.port}/sub", 30)
            counts_new = await asyncio.to_thread(hosts.websockets)
            stop.set()
            await asyncio.gather(*tasks)
            for ws in newcomers:
                await ws.close()
            return {
                "clients_on_a_before": on_a,
                "reconnected_to_b_or_c": sum(1 for r in roamers if r.pids[-1] not in pids_a),
                "failed_connects": sum(r.failed_connects for r in roamers),
                "disconnects_per_moved_client": round(sum(len(r.close_codes) for r in roamers) / len(roamers), 2),
                "close_codes": sorted({c for r in roamers for c in r.close_codes if c is not None}),
                "websockets_per_host_after_move": counts_after,
                "move_seconds": round(moved_s, 1),
                "after_resume_30_new_per_host": [n - o for n, o in zip(counts_new, counts_after, strict=True)],
            }

        row = asyncio.run(scenario())
    finally:
        haproxy.stop()
    print("drain", row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="broadcast,outage,balance,drain")
    parser.add_argument("--rates", default="30,60,120,240,480", help="total msg/s steps of the broadcast phase")
    parser.add_argument("--step-s", type=float, default=4.0)
    parser.add_argument("--outage-rate", type=float, default=30.0)
    parser.add_argument(
        "--stack", default="wsup", help="wsup, socketio or python-socketio (the last two: the broadcast phase only)"
    )
    args = parser.parse_args()
    phases = args.phases.split(",")
    redis = RedisServer().start()
    if args.stack in ("socketio", "python-socketio"):
        peer = NodeHosts(redis) if args.stack == "socketio" else PySocketIOHosts(redis)
        try:
            rows = phase_broadcast(peer, [float(r) for r in args.rates.split(",")], args.step_s, "socketio")
        finally:
            peer.close()
            redis.stop()
        print(orjson.dumps({f"broadcast_{args.stack}": rows}, option=orjson.OPT_INDENT_2).decode())
        return
    hosts = Hosts(redis)
    results: dict[str, Any] = {}
    try:
        if "broadcast" in phases:
            rates = [float(r) for r in args.rates.split(",")]
            results["broadcast"] = phase_broadcast(hosts, rates, args.step_s)
        if "outage" in phases:
            results["outage"] = phase_outage(hosts, redis, args.outage_rate)
        if "balance" in phases:
            results["balance"] = [phase_balance(hosts, agent=True), phase_balance(hosts, agent=False)]
        if "drain" in phases:
            results["drain"] = phase_drain(hosts)
        results["agent_answers_now"] = [agent_answer(a, hosts.agent_port) for a in ADDRESSES]
    finally:
        hosts.close()
        redis.stop()
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

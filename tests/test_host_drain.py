"""`wsup drain --move-websockets` and `wsup resume` through a real HAProxy (leastconn, agent-check) in front of two
wsup "hosts" on 127.0.0.2 and 127.0.0.3: the drained host's clients reconnect to the other host, once each, with no
failed connect; resume brings new connections back; a reload after the resume still works."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Callable

import orjson

from tests.multihost import HAProxy, Roamer, need, until
from tests.wsup_harness import Instance, free_port, wait_until


def _health(host: str, port: int) -> tuple[int, list[str]]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/health", headers={"Authorization": "Bearer " + "t" * 32})
        response = conn.getresponse()
        return response.status, orjson.loads(response.read()).get("reasons", [])
    finally:
        conn.close()


def ready_pids(instance: Instance) -> set[int]:
    return set(instance.worker_pids().values())


def websockets_of(instance: Instance) -> int:
    count: int = instance.status()["totals"]["connections"]["websocket"]
    return count


def test_drain_moves_websockets_to_the_other_host_and_resume_brings_them_back(
    start_wsup: Callable[..., Instance],
) -> None:
    need("haproxy")
    port, agent_port, admin_port = free_port(), free_port(), free_port()
    hosts = {}
    for name, address in (("h1", "127.0.0.2"), ("h2", "127.0.0.3")):
        admin = ("--admin", f"{address}:{admin_port}", "--admin-token", "t" * 32)  # /health for HTTP-only balancers
        hosts[name] = start_wsup(
            "app:asgi", "--host", address, "--agent-port", str(agent_port), *admin, name=name, port=port
        )
    h1, h2 = hosts["h1"], hosts["h2"]
    h1.wait_ready(1)
    h2.wait_ready(1)
    pids1, pids2 = ready_pids(h1), ready_pids(h2)
    haproxy = HAProxy([("127.0.0.2", port, agent_port), ("127.0.0.3", port, agent_port)]).start()
    try:
        wait_until(lambda: all(s["status"] == "UP" for s in haproxy.servers().values()), 30, 0.1, "servers UP")
        url = f"ws://127.0.0.1:{haproxy.port}/ws"

        async def scenario() -> None:
            stop = asyncio.Event()
            roamers = [Roamer(url) for _ in range(20)]
            tasks = [asyncio.create_task(r.run(stop)) for r in roamers]
            try:
                await until(lambda: all(r.pids for r in roamers), "20 clients connected")
                on_h1 = [r for r in roamers if r.pids[0] in pids1]
                assert on_h1 and len(on_h1) < 20, [r.pids for r in roamers]  # leastconn spread them

                drained = await asyncio.to_thread(h1.cli, "drain", "--name", "h1", "--move-websockets", "--window", "1")
                assert drained.returncode == 0, drained.stderr
                await until(lambda: all(len(r.pids) == 2 for r in on_h1), "moved clients reconnected")
                for roamer in on_h1:
                    assert roamer.close_codes == [1012] and roamer.pids[1] in pids2, (roamer.pids, roamer.close_codes)
                assert all(len(r.pids) == 1 for r in roamers if r not in on_h1)  # the others were left alone
                assert sum(r.failed_connects for r in roamers) == 0
                await asyncio.to_thread(wait_until, lambda: websockets_of(h1) == 0, 30, 0.1, "h1 empty")
                status = await asyncio.to_thread(h1.status)
                assert status["host_drain"]["draining"] is True and status["host_drain"]["move"] == "moving"
                assert _health("127.0.0.2", admin_port) == (503, ["draining"])  # for balancers that speak HTTP only
                assert _health("127.0.0.3", admin_port)[0] == 200

                resumed = await asyncio.to_thread(h1.cli, "resume", "--name", "h1")
                assert resumed.returncode == 0, resumed.stderr
                assert _health("127.0.0.2", admin_port)[0] == 200
                await asyncio.to_thread(
                    wait_until, lambda: haproxy.servers()["h0"]["status"] == "UP", 30, 0.1, "h1 UP again in HAProxy"
                )
                # h1 holds none, h2 holds 20: leastconn sends the next ones to h1.
                newcomers = [Roamer(url) for _ in range(5)]
                tasks += [asyncio.create_task(r.run(stop)) for r in newcomers]
                await until(lambda: all(r.pids for r in newcomers), "newcomers connected")
                assert all(r.pids[0] in pids1 for r in newcomers), [r.pids for r in newcomers]
            finally:
                stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(scenario())
        # The move left the workers serving, and a reload after the resume replaces them as usual.
        reload = h1.cli("reload", "--name", "h1")
        assert reload.returncode == 0, reload.stderr
        h1.wait_ready(1)
        assert ready_pids(h1).isdisjoint(pids1)
    finally:
        haproxy.stop()

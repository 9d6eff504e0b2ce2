"""The supervisor process under attack and under interruption: hostile reports on its stats socket while clients are
connected, and a stop (CLI or SIGTERM) in the middle of a reload. Real processes, real clients."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
import pytest
import zmq
from websockets.asyncio.client import ClientConnection

from ipc.endpoints import instance_paths
from tests.clients import close_all, open_websockets, tally
from tests.wsup_harness import WSUP, Instance, port_is_free, wait_until

HOSTILE_FRAMES = 10_000


def _report(pid: int, slot: int, generation: int, **fields: object) -> bytes:
    body: dict[str, object] = {
        "v": 1, "t": "report", "pid": pid, "slot": slot, "generation": generation, "seq": 1, "http": 0,
        "websocket": 0, "in_flight": 0, "requests": 0, "websocket_sessions": 0, "loop_lag_ms": 0.0,
        "draining": False, "dropped_reports": 0, "bus": {},
    }  # fmt: skip
    body.update(fields)
    return orjson.dumps(body)


def _hostile_frames(pid: int, slot: int, generation: int) -> list[bytes]:
    """Reports that claim to be a live worker's, with every kind of bad number, then random garbage."""
    frames = [
        _report(pid, slot, generation, websocket=-1),
        _report(pid, slot, generation, http=2**64 - 1),
        _report(pid, slot, generation, requests=-(2**63)),
        _report(pid, slot, generation, in_flight=2**53 + 1),
        _report(pid, slot, generation, loop_lag_ms=1e308),
        _report(pid, slot, generation, bus={"lost": -3}),
        _report(pid, slot, generation).replace(b'"loop_lag_ms":0.0', b'"loop_lag_ms":NaN'),
        _report(pid, slot, generation).replace(b'"http":0', b'"http":1e400'),
    ]
    rng = random.Random(9)
    while len(frames) < HOSTILE_FRAMES:
        kind = rng.randrange(3)
        if kind == 0:
            frames.append(rng.randbytes(rng.randrange(1, 200)))
        elif kind == 1:
            frames.append(_report(pid, slot, generation, websocket=rng.choice([-(2**31), -1, 2**62, "x", None])))
        else:
            frames.append(orjson.dumps({"v": 1, "t": rng.choice(["ready", "failed", "report", "x"]), "pid": pid}))
    return frames


def test_hostile_reports_are_counted_and_nobody_is_killed(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "4", "--heartbeat-timeout", "3")
    status = wsup.wait_ready(4)
    pids = {w["slot"]: w["pid"] for w in status["workers"]}
    victim = status["workers"][0]
    paths = instance_paths(wsup.name, Path(wsup.env["WSUP_RUN_DIR"]))

    async def scenario() -> None:
        clients = await open_websockets(f"{wsup.ws_url}/ws", 200)
        try:
            updates_before = wsup.status()["balance"]["updates"]
            context = zmq.Context()
            try:
                with context.socket(zmq.PUSH) as push:
                    push.setsockopt(zmq.LINGER, 5000)
                    push.setsockopt(zmq.SNDHWM, 0)
                    push.connect(paths.stats)
                    for frame in _hostile_frames(victim["pid"], victim["slot"], victim["generation"]):
                        push.send(frame)
            finally:
                context.term()
            await asyncio.to_thread(
                wait_until,
                lambda: wsup.status()["ipc"]["malformed_stats"] >= HOSTILE_FRAMES,
                60,
                0.2,
                "every hostile frame to be counted as malformed",
            )
            # Past the heartbeat timeout: every worker must still be the one that was there (no one went silent).
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                now = wsup.status()
                assert {w["slot"]: w["pid"] for w in now["workers"]} == pids
                assert now["supervisor"]["errors"]["total"] == 0, now["supervisor"]["errors"]
                await asyncio.sleep(0.5)
            # Steering still plans: new clients are placed on every worker, and the program was re-attached.
            more = await open_websockets(f"{wsup.ws_url}/ws", 80)
            clients += more
            assert len(tally(more)) == 4, tally(more)
            assert wsup.status()["balance"]["updates"] > updates_before
        finally:
            await close_all(clients)

    asyncio.run(scenario())
    assert wsup.status()["ipc"]["malformed_stats"] == HOSTILE_FRAMES


async def _hold(connections: list[tuple[ClientConnection, int]]) -> list[tuple[int | None, bool]]:
    """Wait for each connection to be closed by the server: (close code received, whether a close frame came)."""

    async def one(ws: ClientConnection) -> tuple[int | None, bool]:
        try:
            async for _ in ws:
                pass
        except Exception:  # a reset instead of a close frame: recorded below as no close frame
            pass
        received = ws.protocol.close_rcvd
        return (received.code if received else None), received is not None

    return list(await asyncio.gather(*(one(ws) for ws, _ in connections)))


@pytest.mark.parametrize("how", ["cli", "sigterm"])
def test_a_stop_during_a_reload_closes_every_client_once_and_leaves_nothing(
    start_wsup: Callable[..., Instance], how: str
) -> None:
    wsup = start_wsup("app:asgi", "-i", "4", "--ws-drain-window", "1", "--graceful-timeout", "20")
    status = wsup.wait_ready(4)
    procs = [psutil.Process(status["supervisor"]["pid"])] + [psutil.Process(w["pid"]) for w in status["workers"]]

    async def scenario() -> tuple[list[tuple[int | None, bool]], subprocess.CompletedProcess[str]]:
        clients = await open_websockets(f"{wsup.ws_url}/ws", 200)
        held = asyncio.create_task(_hold(clients))
        reload = subprocess.Popen(
            [*WSUP, "reload", "--name", wsup.name],
            env=wsup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # 0.5 s into the reload: its first replacement is starting (or just swapped in).
            await asyncio.to_thread(
                wait_until, lambda: wsup.status()["operation"] == "reload", 20, 0.05, "the reload to start"
            )
            await asyncio.sleep(0.5)
            for worker in wsup.status()["starting"]:
                procs.append(psutil.Process(worker["pid"]))
            if how == "cli":
                stopped = await asyncio.to_thread(wsup.cli, "stop", "--name", wsup.name)
                assert stopped.returncode == 0, stopped.stderr
            else:
                os.kill(wsup.proc.pid, signal.SIGTERM)
            code = await asyncio.to_thread(wsup.proc.wait, 60)
            assert code == 0, wsup.log()
            out, err = await asyncio.to_thread(reload.communicate, timeout=60)
        finally:
            if reload.poll() is None:
                reload.kill()
        return await asyncio.wait_for(held, 60), subprocess.CompletedProcess(reload.args, reload.returncode, out, err)

    closes, reload = asyncio.run(scenario())
    assert all(framed for _, framed in closes), "a client was cut without a close frame"
    codes = {code for code, _ in closes}
    assert codes <= {1001, 1012}, codes
    assert reload.returncode != 0 and "stopping" in reload.stderr, reload.stderr
    procs += [psutil.Process(p) for p in _children_seen(wsup)]
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"left running: {alive}"
    assert port_is_free(wsup.port)


def _children_seen(wsup: Instance) -> list[int]:
    """Workers the log says were started (a replacement may have begun after the last status)."""
    pids = []
    for line in wsup.log().splitlines():
        if "started worker" in line:
            pid = int(line.split("started worker ")[1].split()[0])
            if psutil.pid_exists(pid):
                pids.append(pid)
    return pids

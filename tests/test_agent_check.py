"""HAProxy's agent-check as wsup answers it: the pure answer, and a real instance asked over TCP while its worker
is not ready yet, ready, loaded, draining and resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.process.agent_check import HostLoad, agent_reply
from tests.clients import close_all, open_websockets
from tests.multihost import agent_answer
from tests.wsup_harness import Instance, free_port, wait_until


def load(workers: int = 4, ready: int = 4, connections: int = 0, draining: bool = False) -> HostLoad:
    return HostLoad(workers, ready, connections, draining, stopping=False)


def test_an_idle_host_with_every_worker_ready_answers_full_weight() -> None:
    assert agent_reply(load(), capacity=1000) == "up ready 100%\n"


def test_the_weight_falls_with_ready_workers_and_with_live_connections() -> None:
    assert agent_reply(load(ready=2), capacity=1000) == "up ready 50%\n"
    assert agent_reply(load(connections=370), capacity=1000) == "up ready 63%\n"
    assert agent_reply(load(ready=2, connections=500), capacity=1000) == "up ready 25%\n"


def test_a_full_host_keeps_the_lowest_weight_not_zero() -> None:
    # 0% would mean "drain" to HAProxy: a host over capacity still takes a trickle, like every other full host.
    assert agent_reply(load(connections=5000), capacity=1000) == "up ready 1%\n"


def test_draining_stopping_and_no_ready_worker() -> None:
    assert agent_reply(load(draining=True), capacity=1000) == "drain\n"
    assert agent_reply(load(ready=0), capacity=1000) == "down#no worker ready\n"
    assert agent_reply(HostLoad(2, 2, 0, False, stopping=True), capacity=1000) == "down#stopping\n"


HOSTILE = [HostLoad(0, 0, 0, False, False), HostLoad(2, 9, -5, False, False), HostLoad(1, 1, 1 << 62, False, False)]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_out_of_range_inputs_still_give_a_valid_answer(hostile: HostLoad) -> None:
    answer = agent_reply(hostile, capacity=1)
    assert answer.endswith("\n") and answer.isascii()
    assert answer.startswith(("up ready ", "down#"))


def test_a_real_instance_answers_through_its_life(
    start_wsup: Callable[..., Instance], wsup_env: dict[str, str], run_dir: Path
) -> None:
    gate = run_dir / "gate"
    wsup_env["WSUP_TEST_GATE"] = str(gate)
    agent_port = free_port()
    instance = start_wsup(
        "tests.apps.gated:asgi", "--agent-port", str(agent_port), "--agent-capacity", "20", name="agent"
    )
    host = "127.0.0.1"
    # The agent listens before the worker is ready, and says so.
    assert wait_until(lambda: _try_answer(host, agent_port), 30, 0.05, "agent answer") == "down#no worker ready"
    gate.touch()
    instance.wait_ready(1)
    assert agent_answer(host, agent_port) == "up ready 100%"

    async def loaded() -> None:
        clients = await open_websockets(f"ws://127.0.0.1:{instance.port}/ws", 10)
        try:
            # 10 of a capacity of 20: half the weight.
            await asyncio.to_thread(wait_until, lambda: agent_answer(host, agent_port) == "up ready 50%", 30, 0.05)
        finally:
            await close_all(clients)

    asyncio.run(loaded())
    assert instance.cli("drain", "--name", "agent").returncode == 0
    assert agent_answer(host, agent_port) == "drain"
    status = instance.status()
    assert status["host_drain"]["draining"] is True and status["agent"]["now"] == "drain"
    text = instance.cli("status", "--name", "agent").stdout
    assert "DRAINING" in text and f"agent-check on 127.0.0.1:{agent_port}: 'drain'" in text, text
    assert instance.cli("resume", "--name", "agent").returncode == 0
    assert agent_answer(host, agent_port).startswith("up ready ")
    assert instance.status()["host_drain"]["draining"] is False


def _try_answer(host: str, port: int) -> str | None:
    try:
        return agent_answer(host, port)
    except OSError:
        return None

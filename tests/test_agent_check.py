"""HAProxy's agent-check as wsup answers it: the pure answer, and a real instance asked over TCP while its worker
is not ready yet, ready, loaded, draining and resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.process.agent_check import HostLoad, agent_reply
from supervisor.process.peer_counts import count_by_peer, normalize
from tests.clients import close_all, open_websockets
from tests.multihost import agent_answer
from tests.wsup_harness import Instance, free_port, wait_until


def load(
    workers: int = 4, ready: int = 4, connections: int = 0, seen: int | None = None, draining: bool = False
) -> HostLoad:
    return HostLoad(workers, ready, connections, draining, stopping=False, from_balancer=seen)


def test_a_host_whose_connections_all_came_through_the_balancer_answers_full_weight() -> None:
    assert agent_reply(load()) == "up ready 100%\n"
    assert agent_reply(load(connections=500, seen=500)) == "up ready 100%\n"  # leastconn alone is right then


def test_the_weight_is_the_share_of_the_load_the_balancer_sees_times_the_ready_share() -> None:
    # 200 connections that did not come through this balancer, 99 that did: it sees a third of the load.
    assert agent_reply(load(connections=299, seen=99)) == "up ready 33%\n"
    assert agent_reply(load(ready=2)) == "up ready 50%\n"
    assert agent_reply(load(ready=2, connections=299, seen=99)) == "up ready 17%\n"


def test_a_host_full_of_other_connections_keeps_the_lowest_weight_not_zero() -> None:
    # 0% would mean "drain" to HAProxy: the host still takes a trickle.
    assert agent_reply(load(connections=5000, seen=0)) == "up ready 1%\n"


def test_draining_stopping_and_no_ready_worker() -> None:
    assert agent_reply(load(draining=True)) == "drain\n"
    assert agent_reply(load(ready=0)) == "down#no worker ready\n"
    assert agent_reply(HostLoad(2, 2, 0, False, stopping=True)) == "down#stopping\n"


HOSTILE = [
    HostLoad(0, 0, 0, False, False),
    HostLoad(2, 9, -5, False, False, from_balancer=-3),
    HostLoad(1, 1, 1 << 62, False, False, from_balancer=1 << 63),
    HostLoad(1, 1, 10, False, False, from_balancer=50),
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_out_of_range_inputs_still_give_a_valid_answer(hostile: HostLoad) -> None:
    answer = agent_reply(hostile)
    assert answer.endswith("\n") and answer.isascii()
    assert answer.startswith(("up ready ", "down#"))


def test_the_kernel_table_is_read_by_local_port_and_remote_address(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    rows = [
        "   0: 0200007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n",
        "   1: 0200007F:1F40 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n",
        "   2: 0200007F:1F40 0500007F:D433 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n",
        "   3: 0200007F:1F40 0100007F:D434 06 00000000:00000000 00:00000000 00000000     0        0 4 1\n",  # TIME_WAIT
        "   4: 0200007F:1F41 0100007F:D435 01 00000000:00000000 00:00000000 00000000     0        0 5 1\n",  # port
        "   5: 0300007F:1F40 0100007F:D437 01 00000000:00000000 00:00000000 00000000     0        0 7 1\n",  # address
        "   6: garbage\n",
    ]
    table.write_text(header + "".join(rows))
    table6 = tmp_path / "tcp6"
    mapped = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1
    table6.write_text(header + f"   0: {mapped}:1F40 {mapped}:D436 01 0:0 00:0 0 0 0 6 1\n")
    tables = (str(table), str(table6), str(tmp_path / "absent"))
    assert count_by_peer(8000, "127.0.0.2", tables) == {"127.0.0.1": 2, "127.0.0.5": 1}
    assert count_by_peer(8000, "0.0.0.0", tables) == {"127.0.0.1": 4, "127.0.0.5": 1}
    assert normalize("::ffff:127.0.0.1") == "127.0.0.1" and normalize("10.0.0.1") == "10.0.0.1"


def test_a_real_instance_answers_through_its_life(
    start_wsup: Callable[..., Instance], wsup_env: dict[str, str], run_dir: Path
) -> None:
    gate = run_dir / "gate"
    wsup_env["WSUP_TEST_GATE"] = str(gate)
    agent_port = free_port()
    instance = start_wsup("tests.apps.gated:asgi", "--agent-port", str(agent_port), name="agent")
    host = "127.0.0.1"
    # The agent listens before the worker is ready, and says so.
    assert wait_until(lambda: _try_answer(host, agent_port), 30, 0.05, "agent answer") == "down#no worker ready"
    gate.touch()
    instance.wait_ready(1)
    assert agent_answer(host, agent_port) == "up ready 100%"

    async def loaded() -> None:
        # 9 clients from 127.0.0.5, 9 from 127.0.0.1, the address the agent is asked from: it sees half the load.
        clients = await open_websockets(f"ws://127.0.0.1:{instance.port}/ws", 9, local_address="127.0.0.5")
        clients += await open_websockets(f"ws://127.0.0.1:{instance.port}/ws", 9)
        try:
            await asyncio.to_thread(wait_until, lambda: agent_answer(host, agent_port) == "up ready 53%", 30, 0.05)
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

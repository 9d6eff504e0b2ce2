"""``--balance ip-hash`` with real processes (supervisor.steering.ip_hash through the supervisor): clients from many
127.0.0.x addresses through a scale up, a scale down and a worker killed with SIGKILL.

What the design promises, and all this asserts: while the ready slots do not change, every address goes to one
slot; a slot whose worker is replaced keeps its addresses (its replacement serves them); adding a slot moves
addresses only to the new slot; removing slots moves only the removed slots' addresses. A worker that is not
replaced keeps its pid, so a client whose slot did not change keeps its worker; a client that connects while its
slot has no worker is served by the replacement.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable

import orjson
import psutil
import pytest

from tests.wsup_harness import Instance, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="steering is Linux-only")

SOURCES = [f"127.0.0.{host}" for host in range(2, 42)]  # 40 client addresses (the server listens on 127.0.0.1)
TRIES = 3  # connections per address and phase: each must reach the same worker


def served_by(port: int, source: str) -> int:
    """The pid of the worker that answered one new connection from ``source`` (the demo app's /health says it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return int(orjson.loads(body)["pid"])


def placement(instance: Instance) -> dict[str, tuple[int, int]]:
    """address -> (slot, pid) of the worker that serves it, after checking every try from it got that worker."""
    slots = {pid: slot for slot, pid in instance.worker_pids().items()}
    placed = {}
    for source in SOURCES:
        pids = {served_by(instance.port, source) for _ in range(TRIES)}
        assert len(pids) == 1, f"{source} reached workers {sorted(pids)}"
        pid = pids.pop()
        assert pid in slots, f"{source} reached {pid}, not a ready worker of {slots}"
        placed[source] = (slots[pid], pid)
    return placed


def on_slots(placed: dict[str, tuple[int, int]]) -> set[int]:
    return {slot for slot, _ in placed.values()}


def steady(instance: Instance, workers: int) -> None:
    """``workers`` ready, none draining, and the program in force gives each of them addresses: a worker reports
    ready a moment before the supervisor sees it reporting and lets its slot take a share."""

    def settled() -> bool:
        status = instance.status()
        buckets = status["balance"].get("buckets") or []
        ready = status["totals"]["ready"] == workers and not status["draining"]
        return ready and len(buckets) == workers and all(buckets)

    wait_until(settled, 30, 0.1, f"{workers} ready workers, each with its share of the addresses")


def scale(instance: Instance, workers: int) -> None:
    result = instance.cli("scale", "--name", instance.name, str(workers))
    assert result.returncode == 0, result.stderr
    steady(instance, workers)


def test_addresses_stay_on_their_slot_through_scaling_and_a_crash(start_wsup: Callable[..., Instance]) -> None:
    instance = start_wsup("app:asgi", "-i", "3", "--balance", "ip-hash")
    steady(instance, 3)
    balance = instance.status()["balance"]
    assert (balance["mode"], balance["reason"]) == ("ip-hash", None)
    first = placement(instance)
    assert on_slots(first) == {0, 1, 2}, "40 addresses hash onto every slot"

    # Up to 4: an address either stays (same slot, same worker) or moves to the new slot 3.
    scale(instance, 4)
    up = placement(instance)
    for source, (slot, pid) in up.items():
        assert (slot, pid) == first[source] or slot == 3, f"{source}: {first[source]} -> {(slot, pid)}"
    assert 3 in on_slots(up), "the new slot takes a share of the addresses"

    # Down to 2: only the addresses of the removed slots 2 and 3 move.
    scale(instance, 2)
    down = placement(instance)
    for source, (slot, pid) in down.items():
        if up[source][0] in (0, 1):
            assert (slot, pid) == up[source], f"{source}: {up[source]} -> {(slot, pid)}"
    assert on_slots(down) == {0, 1}

    # SIGKILL of slot 1's worker: its addresses wait for the replacement on the same slot; nobody else moves.
    killed = instance.worker_pids()[1]
    waiting = next(source for source, (slot, _) in down.items() if slot == 1)
    dead = psutil.Process(killed)
    os.kill(killed, signal.SIGKILL)
    dead.wait(30)
    # Connected while slot 1 has no worker: the connection waits in the slot's accept queue for the replacement.
    queued_on = served_by(instance.port, waiting)
    wait_until(
        lambda: len(pids := instance.worker_pids()) == 2 and pids[1] != killed, 30, 0.1, "slot 1's replacement ready"
    )
    steady(instance, 2)
    replacement = instance.worker_pids()[1]
    assert queued_on == replacement
    after = placement(instance)
    for source, (slot, pid) in after.items():
        expected = down[source] if down[source][0] == 0 else (1, replacement)
        assert (slot, pid) == expected, f"{source}: {down[source]} -> {(slot, pid)}"
    assert instance.status()["workers"][1]["reason"] == "crash"

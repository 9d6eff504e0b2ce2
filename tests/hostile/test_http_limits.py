"""HTTP abuse against a worker (supervisor.worker.http_limits): huge headers, slowloris, silent connections and a
huge body nobody reads. Each attack is what a hostile client did to the worker before the limits (defect 5)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import psutil

from tests.clients import http_get
from tests.wsup_harness import Instance, eventually, wait_until

HEADER_TIMEOUT = "2"
IDLE_TIMEOUT = "1"


def _start(start_wsup: Callable[..., Instance]) -> tuple[Instance, psutil.Process]:
    instance = start_wsup("app:asgi", "-i", "1", "--header-timeout", HEADER_TIMEOUT, "--idle-timeout", IDLE_TIMEOUT)
    status = instance.wait_ready(1)
    return instance, psutil.Process(status["workers"][0]["pid"])


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed (EOF or reset); what it sent first is skipped."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass
    return True


def test_oversized_headers_get_431_and_cost_no_memory(start_wsup: Callable[..., Instance]) -> None:
    instance, worker = _start(start_wsup)
    with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 431 ")
    before = worker.memory_info().rss

    def send_huge_header() -> None:
        # 32 MiB of one header, as the attack did; the worker answers and closes after its limit.
        with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            chunk = b"b" * (1 << 20)
            with contextlib.suppress(OSError):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(32):
                    sock.sendall(chunk)

    for _ in range(8):
        send_huge_header()
    grown = worker.memory_info().rss - before
    assert grown < 2 << 20, f"the worker grew by {grown / 2**20:.1f} MiB"
    assert http_get(instance.port, "/health")[0] == 200


def test_slowloris_and_silent_connections_are_closed_while_others_are_served(
    start_wsup: Callable[..., Instance],
) -> None:
    instance, _ = _start(start_wsup)

    async def attack() -> None:
        slow = [await asyncio.open_connection("127.0.0.1", instance.port) for _ in range(1000)]
        silent = [await asyncio.open_connection("127.0.0.1", instance.port) for _ in range(2000)]
        for _, writer in slow:
            writer.write(b"GET / HTTP/1.1\r\n")
        closed = [asyncio.ensure_future(_closed_by_server(reader)) for reader, _ in slow + silent]
        probes = 0

        async def trickle_and_probe() -> None:
            nonlocal probes
            while not all(task.done() for task in closed):
                for _, writer in slow:  # a header byte at a time: never complete
                    if not writer.is_closing():
                        with contextlib.suppress(OSError):
                            writer.write(b"x")
                status, _ = await asyncio.to_thread(http_get, instance.port, "/health")
                assert status == 200
                probes += 1
                await asyncio.sleep(0.1)

        prober = asyncio.ensure_future(trickle_and_probe())
        await eventually(lambda: all(task.done() for task in closed), "every attacking connection closed", 60)
        await prober
        assert probes > 0
        for _, writer in slow + silent:
            writer.close()

    asyncio.run(attack())
    assert instance.status()["totals"]["ready"] == 1


def test_the_limits_hold_for_the_next_request_on_a_keep_alive_connection(start_wsup: Callable[..., Instance]) -> None:
    """A client that was served once is held to the same header size and time on its next request."""
    instance, _ = _start(start_wsup)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

    def served_once() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", instance.port), timeout=30)
        sock.sendall(request)
        reader = sock.makefile("rb")  # the whole answer is read, so the next read is the next answer's
        head = reader.readline()
        assert head.startswith(b"HTTP/1.1 200 "), head
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            assert line, f"closed inside the answer's head: {head!r}"
            head += line
        assert len(reader.read(_content_length(head))) == _content_length(head)
        reader.close()  # the socket stays open: makefile holds its own reference
        return sock

    with served_once() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 431 ")

    async def slow_second_request() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        await reader.readexactly(_content_length(head))
        writer.write(b"GET / HTTP/1.1\r\n")
        closed = asyncio.ensure_future(_closed_by_server(reader))
        while not closed.done():  # a header byte at a time, never complete
            with contextlib.suppress(OSError):
                writer.write(b"x")
            await asyncio.wait([closed], timeout=0.2)
        writer.close()

    asyncio.run(asyncio.wait_for(slow_second_request(), 60))
    assert instance.status()["workers"][0]["http_limits"]["header_timeout"] >= 1


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name == b"content-length":
            return int(value)
    raise AssertionError(f"no content-length in {head!r}")


def test_unread_body_does_not_keep_the_connection(start_wsup: Callable[..., Instance]) -> None:
    instance, _ = _start(start_wsup)
    sent = 0
    with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
        chunk = b"x" * 65536
        with contextlib.suppress(OSError):
            while sent < 100 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
    assert sent < 100 << 20, "the worker read the whole 100 MiB body of a request it had answered"


def test_connections_past_the_cap_get_503(start_wsup: Callable[..., Instance]) -> None:
    instance = start_wsup("app:asgi", "-i", "1", "--max-connections", "5")
    instance.wait_ready(1)
    held = [socket.create_connection(("127.0.0.1", instance.port), timeout=30) for _ in range(5)]
    try:
        for sock in held:  # each is served: the cap counts live connections, these among them
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as extra:
            assert extra.recv(64).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in held:
            sock.close()
    # Below the cap again once the worker has seen those connections end.
    wait_until(lambda: http_get(instance.port, "/health")[0] == 200, 20, 0.1, "a request served below the cap")
    wait_until(lambda: "1 connections refused at the cap (--max-connections 5)" in instance.log(), 20, 0.1, "the log")


def _refused_or_served(port: int) -> tuple[socket.socket, bytes]:
    """A connection that asks for /health and keeps the answer's status line (200, or 503 past the cap)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock, sock.recv(12)


def test_status_counts_what_each_limit_refused_or_closed(start_wsup: Callable[..., Instance]) -> None:
    """Every kind of abuse above, a known number of times, against two workers: `status --json` shows each limit's
    count per worker, the totals are their sums, and they equal what the hostile clients saw."""
    instance = start_wsup(
        "app:asgi", "-i", "2", "--header-timeout", "1", "--idle-timeout", "1", "--max-connections", "4"
    )
    instance.wait_ready(2)
    # At most 4 slow and silent connections at once: all on one worker, they are still within its cap.
    expected = {"max_header_bytes": 3, "header_timeout": 1, "idle_timeout": 3, "unread_body": 2}

    for _ in range(expected["max_header_bytes"]):
        with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 431 ")

    async def slow_and_silent() -> None:
        slow = [await asyncio.open_connection("127.0.0.1", instance.port) for _ in range(expected["header_timeout"])]
        silent = [await asyncio.open_connection("127.0.0.1", instance.port) for _ in range(expected["idle_timeout"])]
        for _, writer in slow:
            writer.write(b"GET / HTTP/1.1\r\nX-Never: ends")  # a request line and half a header, never finished
        await asyncio.wait_for(asyncio.gather(*(_closed_by_server(reader) for reader, _ in slow + silent)), 60)
        for _, writer in slow + silent:
            writer.close()

    asyncio.run(slow_and_silent())

    for _ in range(expected["unread_body"]):
        with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"
            with contextlib.suppress(OSError):  # until the worker closes: it will not read 100 MiB it never needs
                while True:
                    sock.sendall(b"x" * 65536)

    # Past the cap (4 per worker): 12 kept-alive connections, of which at least 4 are refused.
    held = [_refused_or_served(instance.port) for _ in range(12)]
    for _, line in held:
        assert line in (b"HTTP/1.1 200", b"HTTP/1.1 503"), line
    expected["max_connections"] = sum(line == b"HTTP/1.1 503" for _, line in held)
    assert expected["max_connections"] >= 4
    for sock, _ in held:
        sock.close()

    seen: list[dict[str, int]] = []

    def counted() -> dict[str, Any] | None:
        status = instance.status()
        seen.append(status["totals"]["http_limits"])
        return status if seen[-1] == expected else None

    try:
        status = wait_until(counted, 20, 0.1, f"the totals {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last totals were {seen[-1:]}") from None
    rows = [worker["http_limits"] for worker in status["workers"]]
    assert len(rows) == 2 and all(set(row) == set(expected) for row in rows)
    assert {key: sum(row[key] for row in rows) for key in expected} == expected
    text = instance.cli("status", "--name", instance.name).stdout
    assert (
        f"http limits: 3 431 over --max-header-bytes, {expected['max_connections']} 503 over --max-connections,"
        " 1 closed by --header-timeout, 3 closed by --idle-timeout, 2 closed with an unread body"
    ) in text
    for worker in status["workers"]:
        if any(worker["http_limits"].values()):
            assert f"  slot {worker['slot']} pid {worker['pid']}: " in text

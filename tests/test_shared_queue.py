"""The shared accept queue (supervisor.process.listeners) with a real `wsup` and real clients on 127.0.0.1: a stream
of short HTTP connections goes to the queue every worker accepts from, and sparse WebSockets are placed one by one
again once the stream is over."""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson

from tests.clients import close_all, open_websockets, tally
from tests.wsup_harness import Instance, wait_until

STREAM_CLIENTS = 4


def _get_health(port: int) -> int:
    """One request on a new connection (``Connection: close``); the pid of the worker that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return int(orjson.loads(body)["pid"])


class Stream:
    """Threads sending one request per connection as fast as they can, until stopped; counts answers per pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.served: collections.Counter[int] = collections.Counter()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(STREAM_CLIENTS)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pid = _get_health(self.port)
            except BaseException as exc:  # recorded: the test fails on any failed request
                self.errors.append(exc)
                return
            with self._lock:
                self.served[pid] += 1

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _balance(wsup: Instance) -> dict[str, Any]:
    balance: dict[str, Any] = wsup.status()["balance"]
    return balance


def test_a_stream_of_short_connections_goes_to_the_shared_queue(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    wsup.wait_ready(2)
    workers = set(wsup.worker_pids().values())
    assert _balance(wsup)["shared_queue"] == 0.0  # idle: each connection is placed on a worker

    with Stream(wsup.port) as stream:
        during = wait_until(
            lambda: (b := _balance(wsup))["shared_queue"] == 1.0 and b, 30.0, 0.1, "the shared queue to take a stream"
        )
        wait_until(lambda: stream.errors or sum(stream.served.values()) >= 2000, 60.0, 0.1, "2,000 requests")
    assert not stream.errors, stream.errors[:3]
    assert during["weights"] == [0, 0] and not during["fast"] and not during["exact"]
    assert set(stream.served) == workers, stream.served  # any worker takes from the shared queue

    # The stream is over: arrivals are placed one by one again, so two sparse WebSockets get one worker each.
    wait_until(lambda: (b := _balance(wsup))["shared_queue"] == 0.0 and b["exact"], 30.0, 0.1, "exact placement")

    def counted(seen: dict[int, int]) -> bool:
        workers_now = wsup.status()["workers"]
        return {w["pid"]: w["connections"]["websocket"] for w in workers_now if w["connections"]["websocket"]} == seen

    async def sparse() -> dict[int, int]:
        clients = []
        try:
            for _ in range(2):
                clients += await open_websockets(f"{wsup.ws_url}/ws", 1)
                seen = tally(clients)
                await asyncio.to_thread(wait_until, lambda s=seen: counted(s), 20.0, 0.05, f"status to count {seen}")
            return tally(clients)
        finally:
            await close_all(clients)

    assert sorted(asyncio.run(sparse()).values()) == [1, 1]


def test_without_the_shared_queue_every_connection_is_steered(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2", "--no-shared-queue")
    wsup.wait_ready(2)
    with Stream(wsup.port) as stream:
        wait_until(lambda: stream.errors or sum(stream.served.values()) >= 1000, 60.0, 0.1, "1,000 requests")
        balance = _balance(wsup)
    assert not stream.errors, stream.errors[:3]
    assert balance["shared_queue"] is None and sum(balance["weights"]) > 0

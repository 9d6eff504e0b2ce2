"""supervisor/worker/drain.py with a real worker: a WebSocket whose upgrade was still in flight when its worker began
to drain is closed with 1012 like the others, and the drain does not wait for its deadline on it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

from ipc.settings import WorkerSettings
from supervisor.worker.drain import drain_window
from tests.raw_websocket import UPGRADE_HEAD, read_handshake, read_until_close, upgrade_tail
from tests.wsup_harness import WSUP, Instance, wait_until


def test_an_upgrade_in_flight_when_the_drain_begins_is_closed_with_1012(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "1", "--graceful-timeout", "30")
    old = wsup.wait_ready(1)["workers"][0]
    old_pid, old_tag = old["pid"], f"[worker {old['slot']}/{old['generation']}]"
    client = socket.create_connection(("127.0.0.1", wsup.port), timeout=30)
    reload = None
    try:
        client.sendall(UPGRADE_HEAD)  # the request has begun; its headers are not complete yet
        wait_until(lambda: wsup.status()["totals"]["connections"]["http"] == 1, 20, 0.05, "the worker to accept it")
        reload = subprocess.Popen([*WSUP, "reload", "--name", wsup.name], env=wsup.env, stdout=subprocess.DEVNULL)
        with _trickling(client):  # a slow client: a header line now and then keeps it from looking idle
            wait_until(
                lambda: any(w["pid"] == old_pid for w in wsup.status()["draining"]), 60, 0.1, "the old worker to drain"
            )
        client.sendall(upgrade_tail())  # the handshake completes on the draining worker
        assert read_until_close(client, read_handshake(client)) == 1012
        assert reload.wait(60) == 0
    finally:
        client.close()
        if reload is not None and reload.poll() is None:
            reload.kill()
    drained = wait_until(lambda: _drain_line(wsup, old_tag), 10, 0.1, "the old worker's drain to be logged")
    assert "(0 forced)" in drained, drained  # nothing held the drain until its deadline


@contextlib.contextmanager
def _trickling(client: socket.socket) -> Iterator[None]:
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):
            client.sendall(b"X-Trickle: 1\r\n")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _drain_line(wsup: Instance, tag: str) -> str:
    lines = [line for line in wsup.log().splitlines() if tag in line and "drained" in line]
    return lines[-1] if lines else ""


def test_the_drain_window_widens_with_the_websockets_to_close() -> None:
    settings = WorkerSettings(app="app:asgi", ws_drain_window=2.0, ws_drain_rate=1000.0, graceful_timeout=30.0)
    assert drain_window(settings, 400) == 2.0  # few clients: the configured window
    assert drain_window(settings, 11_250) == 11.25  # 45,000 over 4 workers: at most 1,000 reconnects a second
    assert drain_window(settings, 100_000) == 15.0  # never more than half the graceful timeout
    unpaced = WorkerSettings(app="app:asgi", ws_drain_rate=0.0)
    assert drain_window(unpaced, 100_000) == unpaced.ws_drain_window

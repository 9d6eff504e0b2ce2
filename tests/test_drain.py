"""supervisor/worker/drain.py with a real worker: a WebSocket whose upgrade was still in flight when its worker began
to drain is closed with 1012 like the others, and the drain does not wait for its deadline on it."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator

from ipc.settings import WorkerSettings
from supervisor.worker.drain import drain_window
from tests.wsup_harness import WSUP, Instance, wait_until

_UPGRADE_HEAD = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def _upgrade_tail() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )


def _read_frames_until_close(sock: socket.socket) -> int:
    """Read the 101 response and frames; return the close code of the server's close frame."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the handshake's answer: {buffer!r}"
        buffer += chunk
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    while True:
        while len(buffer) < 2:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without a close frame"
            buffer += chunk
        opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
        offset = 2
        if length == 126:
            length, offset = struct.unpack("!H", buffer[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
        while len(buffer) < offset + length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without a close frame"
            buffer += chunk
        payload, buffer = buffer[offset : offset + length], buffer[offset + length :]
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0])


def test_an_upgrade_in_flight_when_the_drain_begins_is_closed_with_1012(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "1", "--graceful-timeout", "30")
    old = wsup.wait_ready(1)["workers"][0]
    old_pid, old_tag = old["pid"], f"[worker {old['slot']}/{old['generation']}]"
    client = socket.create_connection(("127.0.0.1", wsup.port), timeout=30)
    reload = None
    try:
        client.sendall(_UPGRADE_HEAD)  # the request has begun; its headers are not complete yet
        wait_until(lambda: wsup.status()["totals"]["connections"]["http"] == 1, 20, 0.05, "the worker to accept it")
        reload = subprocess.Popen([*WSUP, "reload", "--name", wsup.name], env=wsup.env, stdout=subprocess.DEVNULL)
        with _trickling(client):  # a slow client: a header line now and then keeps it from looking idle
            wait_until(
                lambda: any(w["pid"] == old_pid for w in wsup.status()["draining"]), 60, 0.1, "the old worker to drain"
            )
        client.sendall(_upgrade_tail())  # the handshake completes on the draining worker
        assert _read_frames_until_close(client) == 1012
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

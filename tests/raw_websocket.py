"""A WebSocket client on a bare socket, for tests that must do what a client library would not: split a handshake in
two, leave a ping unanswered, stop reading. The handshake, the server's frames, and masked frames to send."""

from __future__ import annotations

import base64
import os
import socket
import struct

UPGRADE_HEAD = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
CLOSE, PING, PONG, TEXT = 0x8, 0x9, 0xA, 0x1


def upgrade_tail() -> bytes:
    """The rest of an upgrade request after UPGRADE_HEAD, with a fresh key."""
    key = base64.b64encode(os.urandom(16))
    return (
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )


def _more(sock: socket.socket, buffer: bytearray, what: str) -> None:
    chunk = sock.recv(65536)
    assert chunk, f"the server closed the connection before {what}"
    buffer += chunk


def read_handshake(sock: socket.socket) -> bytearray:
    """Read the server's 101 answer; return what followed it (the start of the first frames)."""
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        _more(sock, buffer, "the handshake's answer")
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return bytearray(rest)


def handshake(port: int) -> tuple[socket.socket, bytearray]:
    """A connected WebSocket on ``/ws``, and the bytes already read past the handshake (pass them to read_frame)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(UPGRADE_HEAD + upgrade_tail())
    return sock, read_handshake(sock)


def read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """The server's next frame (servers do not mask): its opcode and payload. ``buffer`` holds what was read ahead."""
    while len(buffer) < 2:
        _more(sock, buffer, "a whole frame")
    opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length >= 126:
        offset = 4 if length == 126 else 10
        while len(buffer) < offset:
            _more(sock, buffer, "a whole frame")
        length = int.from_bytes(buffer[2:offset], "big")
    while len(buffer) < offset + length:
        _more(sock, buffer, "a whole frame")
    payload = bytes(buffer[offset : offset + length])
    del buffer[: offset + length]
    return opcode, payload


def read_until_close(sock: socket.socket, buffer: bytearray) -> int:
    """Skip the server's frames up to its close frame; return the close code."""
    while True:
        opcode, payload = read_frame(sock, buffer)
        if opcode == CLOSE:
            return int(struct.unpack("!H", payload[:2])[0])


def send_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """One final frame, masked as a client must (payloads under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

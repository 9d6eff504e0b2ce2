"""The broadcast bus's wire format, validated on receipt, and the WebSocket frame built once per message per worker.

A bus message is one ZeroMQ multipart message of three frames:

- **topic**: the channel's UTF-8 bytes and a NUL. SUB sockets match by prefix, so without the delimiter a
  subscriber of ``room1`` would also get ``room10``.
- **header**: 24 bytes in network order: wire version (u8), kind (u8), flags (u16, zero), origin (u32: the pid of
  the publishing process), seq (u64: per origin and channel, from 1), exclude (u64: a member id on the origin
  worker that must not receive it, 0 for none).
- **payload**: the message bytes; UTF-8 text for the text kind.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ipc.errors import BusError, MessageTooLargeError, ProtocolError

WIRE_VERSION: Final = 1
HEADER: Final = struct.Struct("!BBHIQQ")
MAX_CHANNEL_BYTES: Final = 255
DEFAULT_MAX_BYTES: Final = 1 << 20
# Messages queued per ZeroMQ pipe (worker → proxy, proxy → worker) before the high-water mark drops: about 12 s
# of the benchmark's 800 msg/s. Drops past it are counted: by the publisher (send refused) or the receiver (gap).
BUS_HWM: Final = 10_000
# ZeroMQ's ZMQ_MAXMSGSIZE is checked per frame, before the frame is read: the payload frame is the largest.
_FRAME_SLACK: Final = 1024
# What a socket that only receives subscriptions (XPUB, a worker's PUB) accepts: a topic and its (un)subscribe byte.
SUBSCRIPTION_MAX_BYTES: Final = MAX_CHANNEL_BYTES + 2 + _FRAME_SLACK


def frame_limit(max_bytes: int) -> int:
    """ZMQ_MAXMSGSIZE for a socket that receives bus messages of at most ``max_bytes`` (``--bus-max-bytes``)."""
    return max_bytes + _FRAME_SLACK


# Channels whose name starts with this byte belong to the bus itself (its start-up probe); users cannot take them.
INTERNAL_PREFIX: Final = "\x01"
_MAX_U32: Final = (1 << 32) - 1


class Kind(enum.IntEnum):
    TEXT = 1  # str and JSON messages: a WebSocket text frame
    BINARY = 2  # bytes: a WebSocket binary frame
    PROBE = 3  # the bus's own round trip that proves a subscription is live; never delivered to anyone


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One bus message. ``data`` is ``str`` for text (checked to be UTF-8) and JSON, ``bytes`` for binary.

    ``origin`` is the pid of the process that published it and ``seq`` its sequence number on this channel.
    """

    channel: str
    kind: Kind
    origin: int
    seq: int
    exclude: int
    payload: bytes
    data: str | bytes

    def json(self) -> Any:
        """The message parsed as JSON (what ``publish`` sent for a dict, list, number...)."""
        return orjson.loads(self.payload)


def validate_channel(channel: object, *, internal: bool = False) -> str:
    """Return ``channel`` if it is a usable channel name; raise BusError saying what is wrong otherwise."""
    if not isinstance(channel, str):
        raise BusError(f"a channel name must be a str, got {type(channel).__name__}")
    size = len(channel.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_CHANNEL_BYTES:
        raise BusError(f"a channel name must be 1 to {MAX_CHANNEL_BYTES} bytes of UTF-8, got {size} bytes")
    if "\x00" in channel:
        raise BusError(f"a channel name cannot contain NUL: {channel!r}")
    if channel.startswith(INTERNAL_PREFIX) and not internal:
        raise BusError(f"channel names starting with \\x01 are reserved for the bus: {channel!r}")
    return channel


def topic(channel: str) -> bytes:
    return channel.encode("utf-8", "surrogatepass") + b"\x00"


def encode_payload(message: object) -> tuple[Kind, bytes]:
    """str → text, bytes-like → binary, anything else → its JSON as text (orjson: dataclasses, datetimes...)."""
    if isinstance(message, str):
        return Kind.TEXT, message.encode("utf-8")
    if isinstance(message, bytes | bytearray | memoryview):
        return Kind.BINARY, bytes(message)
    try:
        return Kind.TEXT, orjson.dumps(message)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise BusError(
            f"cannot publish a {type(message).__name__}: pass str, bytes or a JSON-serialisable value ({exc})"
        ) from None


def check_size(payload: bytes, max_bytes: int) -> None:
    if len(payload) > max_bytes:
        raise MessageTooLargeError(
            f"message of {len(payload)} bytes exceeds the bus limit of {max_bytes} bytes (--bus-max-bytes)"
        )


def encode(topic_bytes: bytes, kind: Kind, origin: int, seq: int, exclude: int, payload: bytes) -> list[bytes]:
    return [topic_bytes, HEADER.pack(WIRE_VERSION, kind, 0, origin & _MAX_U32, seq, exclude), payload]


def decode(frames: list[bytes], max_bytes: int) -> BusMessage:
    """Parse and validate one bus message; raise ProtocolError saying exactly what is wrong."""
    if len(frames) != 3:
        raise ProtocolError(f"bus message has {len(frames)} frames (expected 3)")
    raw_topic, header, payload = frames
    if len(raw_topic) < 2 or raw_topic[-1] != 0 or b"\x00" in raw_topic[:-1]:
        raise ProtocolError("bus topic must be a channel name and one terminating NUL")
    if len(header) != HEADER.size:
        raise ProtocolError(f"bus header has {len(header)} bytes (expected {HEADER.size})")
    version, kind, _flags, origin, seq, exclude = HEADER.unpack(header)
    if version != WIRE_VERSION:
        raise ProtocolError(f"unsupported bus wire version {version} (expected {WIRE_VERSION})")
    if len(payload) > max_bytes:
        raise ProtocolError(f"bus message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        checked = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown bus message kind {kind}") from None
    try:
        channel = raw_topic[:-1].decode("utf-8")
        data: str | bytes = payload.decode("utf-8") if checked is Kind.TEXT else payload
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"bus message has invalid UTF-8: {exc}") from None
    return BusMessage(channel, checked, origin, seq, exclude, payload, data)


def websocket_frame(payload: bytes, kind: Kind) -> bytes:
    """A complete server→client WebSocket frame: FIN, no RSV bits, unmasked (RFC 6455 §5.2).

    RSV1 clear means "not compressed", which stays valid on a connection that negotiated permessage-deflate, so one
    frame serves every client of the worker whatever its extensions.
    """
    first = 0x81 if kind == Kind.TEXT else 0x82
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload

"""The Redis bridge's contracts: its address (parsed, with secrets kept out of every printable form), the mapping
of bus channels to Redis channels, and the envelope a bus message travels in between hosts.

An envelope is one Redis pub/sub message on ``<prefix><channel>``: 24 bytes of header in network order, then the
payload. Header: magic ``b"WB"``, version (u8), kind (u8), host (8 bytes: the publishing host's bridge id, so a host
drops its own messages when Redis echoes them back), origin (u32: the publisher's pid on that host) and seq (u64:
its sequence number on the channel, unchanged, so a loss anywhere between hosts is a gap the receivers count).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from ipc.bus_wire import INTERNAL_PREFIX, Kind
from ipc.errors import ConfigError, ProtocolError

ENVELOPE: Final = struct.Struct("!2sBB8sIQ")
MAGIC: Final = b"WB"
ENVELOPE_VERSION: Final = 1
PASSWORD_ENV: Final = "WSUP_BRIDGE_PASSWORD"
MAX_PREFIX_BYTES: Final = 128
# Bridged messages enter the local bus under origins from here up: a pid is below 2**22 on Linux, so a remote
# publisher's sequence never mixes with a local process's, and the bridge knows its own injections when it sees
# them again on the way out.
REMOTE_ORIGIN_BASE: Final = 1 << 31
_RELAYED_KINDS: Final = frozenset({Kind.TEXT, Kind.BINARY})


@dataclass(frozen=True, slots=True)
class BridgeAddress:
    """A parsed ``redis://`` or ``rediss://`` URL. ``password`` never appears in ``str()``, ``repr()`` or
    ``describe()``; only ``connection_kwargs()`` hands it to the client."""

    scheme: str
    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, environ: dict[str, str] | None = None) -> BridgeAddress:
        env = os.environ if environ is None else environ
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            raise ConfigError("--bridge must be redis://[user:password@]HOST[:PORT][/DB]: bad port") from None
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"--bridge must start with redis:// or rediss://, got {parts.scheme or 'no'} scheme")
        if not parts.hostname:
            raise ConfigError("--bridge needs a host: redis://HOST[:PORT][/DB]")
        if parts.query or parts.fragment:
            raise ConfigError("--bridge takes no query or fragment (the password goes in the URL or the environment)")
        path = parts.path.strip("/") or "0"
        if not path.isdigit() or not 0 <= int(path) <= 1_000_000:
            raise ConfigError("--bridge database must be a whole number (redis://HOST:PORT/DB)")
        password = unquote(parts.password) if parts.password else env.get(PASSWORD_ENV) or None
        username = unquote(parts.username) if parts.username else None
        return cls(parts.scheme, parts.hostname, port, int(path), username, password)

    def __str__(self) -> str:
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}/{self.db}"

    def describe(self) -> str:
        return str(self)

    def redact(self, text: str) -> str:
        """``text`` with the password replaced (an error message from the client is logged and shown in status)."""
        return text.replace(self.password, "***") if self.password else text

    def connection_kwargs(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "ssl": self.scheme == "rediss",
        }


def default_prefix(name: str) -> str:
    return f"wsup:{name}:"


def check_prefix(prefix: str) -> str:
    size = len(prefix.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_PREFIX_BYTES or "\x00" in prefix:
        raise ConfigError(f"--bridge-prefix must be 1 to {MAX_PREFIX_BYTES} bytes without NUL, got {prefix!r}")
    return prefix


def relayed(channel_topic: bytes) -> bool:
    """Whether a bus topic (channel and NUL) is one the bridge carries: not the bus's own internal channels."""
    return len(channel_topic) > 1 and not channel_topic.startswith(INTERNAL_PREFIX.encode())


@dataclass(frozen=True, slots=True)
class Envelope:
    host: bytes
    kind: Kind
    origin: int
    seq: int
    payload: bytes


def pack(host: bytes, kind: Kind, origin: int, seq: int, payload: bytes) -> bytes:
    return ENVELOPE.pack(MAGIC, ENVELOPE_VERSION, kind, host, origin, seq) + payload


def unpack(data: bytes, max_bytes: int) -> Envelope:
    """Parse and range-check one envelope from Redis; raise ProtocolError saying what is wrong."""
    if len(data) < ENVELOPE.size:
        raise ProtocolError(f"bridge envelope of {len(data)} bytes is shorter than its {ENVELOPE.size}-byte header")
    magic, version, kind, host, origin, seq = ENVELOPE.unpack_from(data)
    if magic != MAGIC or version != ENVELOPE_VERSION:
        raise ProtocolError(f"not a wsup bridge envelope (magic {magic!r}, version {version})")
    if kind not in _RELAYED_KINDS:
        raise ProtocolError(f"bridge envelope of kind {kind} (only text and binary are relayed)")
    if seq == 0 or origin >= REMOTE_ORIGIN_BASE:
        raise ProtocolError(f"bridge envelope with origin {origin} and seq {seq} out of range")
    payload = data[ENVELOPE.size :]
    if len(payload) > max_bytes:
        raise ProtocolError(f"bridge message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    if kind == Kind.TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bridge text message is not valid UTF-8") from None
    return Envelope(host, Kind(kind), origin, seq, payload)

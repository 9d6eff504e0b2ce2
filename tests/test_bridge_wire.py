"""The bridge's contracts without processes: its address (and what it never shows), channel names, envelopes."""

from __future__ import annotations

import pytest

from ipc.bridge_wire import (
    ENVELOPE,
    REMOTE_ORIGIN_BASE,
    BridgeAddress,
    check_prefix,
    pack,
    relayed,
    unpack,
)
from ipc.bus_wire import Kind
from ipc.errors import ConfigError, ProtocolError

HOST = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def test_a_url_with_a_password_never_shows_it() -> None:
    address = BridgeAddress.parse("rediss://user:p%40ss@cache.example:6380/2", environ={})
    assert (address.scheme, address.host, address.port, address.db) == ("rediss", "cache.example", 6380, 2)
    assert address.password == "p@ss" and address.connection_kwargs()["ssl"] is True
    for text in (str(address), repr(address), address.describe()):
        assert "p@ss" not in text and "p%40ss" not in text
    assert str(address) == "rediss://user:***@cache.example:6380/2"
    assert address.redact("AuthenticationError: p@ss is wrong") == "AuthenticationError: *** is wrong"


def test_the_password_may_come_from_the_environment_and_the_url_wins() -> None:
    assert BridgeAddress.parse("redis://h", environ={"WSUP_BRIDGE_PASSWORD": "env"}).password == "env"
    assert BridgeAddress.parse("redis://:url@h", environ={"WSUP_BRIDGE_PASSWORD": "env"}).password == "url"
    plain = BridgeAddress.parse("redis://10.0.0.5", environ={})
    assert (plain.port, plain.db, plain.password, str(plain)) == (6379, 0, None, "redis://10.0.0.5:6379/0")


@pytest.mark.parametrize(
    "url", ["http://h:6379", "redis://", "redis://h:99999", "redis://h/x", "redis://h/0?password=x", "h:6379"]
)
def test_bad_urls_are_config_errors_that_name_the_option(url: str) -> None:
    with pytest.raises(ConfigError, match="--bridge"):
        BridgeAddress.parse(url, environ={})


def test_prefixes_are_bounded() -> None:
    assert check_prefix("wsup:chat:") == "wsup:chat:"
    for bad in ("", "x" * 129, "a\x00b"):
        with pytest.raises(ConfigError, match="--bridge-prefix"):
            check_prefix(bad)


def test_internal_channels_are_not_relayed() -> None:
    assert relayed(b"room\x00") and not relayed(b"\x01sync.42\x00") and not relayed(b"\x00")


def test_an_envelope_round_trips() -> None:
    envelope = unpack(pack(HOST, Kind.TEXT, 4242, 7, "héllo".encode()), max_bytes=100)
    assert (envelope.host, envelope.kind, envelope.origin, envelope.seq, envelope.payload) == (
        HOST,
        Kind.TEXT,
        4242,
        7,
        "héllo".encode(),
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"WB\x01", "shorter"),
        (b"XX" + pack(HOST, Kind.TEXT, 1, 1, b"")[2:], "not a wsup bridge envelope"),
        (pack(HOST, Kind.PROBE, 1, 1, b""), "kind"),
        (pack(HOST, Kind.TEXT, 1, 0, b""), "out of range"),
        (ENVELOPE.pack(b"WB", 1, 1, HOST, REMOTE_ORIGIN_BASE, 1), "out of range"),
        (pack(HOST, Kind.BINARY, 1, 1, b"x" * 101), "exceeds"),
        (pack(HOST, Kind.TEXT, 1, 1, b"\xff\xfe"), "UTF-8"),
    ],
)
def test_hostile_envelopes_are_refused_with_the_reason(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        unpack(data, max_bytes=100)

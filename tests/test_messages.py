"""ipc/messages.py: the codec that every message crossing a process boundary goes through, and its range checks."""

from __future__ import annotations

import orjson
import pytest

from ipc.errors import NotRunningError, ProtocolError, RemoteError, error_from_kind
from ipc.messages import MAX_MESSAGE_BYTES, Failed, Ready, Reply, Report, Request, decode, encode
from ipc.stats import HEARTBEAT_S, REPORT_BUSY_S, REPORT_TICK_S, Counts, Details, report_due


def _report(**overrides: object) -> Report:
    fields: dict[str, object] = dict(
        pid=1,
        slot=0,
        generation=1,
        seq=1,
        http=2,
        websocket=3,
        in_flight=0,
        requests=5,
        websocket_sessions=6,
        loop_lag_ms=0.5,
        draining=False,
        dropped_reports=0,
    )
    fields.update(overrides)
    return Report(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        Ready(1, 2, 3),
        Failed(1, 2, 3, "boom"),
        _report(),
        Request("id", "status", {"a": 1}),
        Reply("id", "ok", {"x": 1}),
    ],
)
def test_codec_round_trip(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"t":"ready","pid":1,"slot":0,"generation":1}', "unsupported protocol version None"),
        (b'{"v":1,"t":"nope"}', "unknown message type 'nope'"),
        (b'{"v":1,"t":"ready","pid":1,"slot":0}', "lacks field(s) generation"),
        (b'{"v":1,"t":"ready","pid":"1","slot":0,"generation":1}', "'pid' must be int, got str"),
        (b'{"v":1,"t":"ready","pid":true,"slot":0,"generation":1}', "'pid' must be int, got bool"),
    ],
)
def test_codec_rejects_bad_input(payload: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("(", r"\(").replace(")", r"\)")):
        decode(payload)


def test_fields_from_a_newer_peer_are_left_out_not_refused() -> None:
    # After an in-place upgrade, `wsup reload` starts workers that may report fields the running supervisor lacks.
    body = orjson.loads(encode(_report()))
    body["added_in_a_later_version"] = {"n": 3}
    assert decode(orjson.dumps(body)) == _report()
    flood = {"v": 1, "t": "ready", "pid": 1, "slot": 0, "generation": 1, **{f"x{i}": i for i in range(17)}}
    with pytest.raises(ProtocolError, match="17 unknown fields"):
        decode(orjson.dumps(flood))


def test_codec_rejects_oversized_before_parsing() -> None:
    payload = orjson.dumps(
        {"v": 1, "t": "failed", "pid": 1, "slot": 0, "generation": 1, "error": "x" * MAX_MESSAGE_BYTES}
    )
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(payload)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("websocket", -1, "'websocket' is out of range: -1"),
        ("http", 2**64 - 1, "'http' is out of range"),
        ("requests", 2**53 + 1, "'requests' is out of range"),
        ("pid", 0, "'pid' is out of range"),
        ("slot", 10_000, "'slot' is out of range"),
        ("generation", 0, "'generation' is out of range"),
        ("loop_lag_ms", -0.5, "'loop_lag_ms' is out of range"),
        ("loop_lag_ms", 1e300, "'loop_lag_ms' is out of range"),
        ("bus", {"lost": -5}, "bad counter 'lost'"),
        ("bus", {"lost": 1.5}, "bad counter 'lost'"),
        ("bus", {str(i): 1 for i in range(65)}, "has 65 counters"),
        ("http_limits", {"idle_timeout": -1}, "bad counter 'idle_timeout'"),
        ("http_limits", {"idle_timeout": 2**64 - 1}, "bad counter 'idle_timeout'"),
        ("http_limits", {"x" * 65: 1}, "bad counter"),
        ("http_limits", {str(i): 1 for i in range(65)}, "has 65 counters"),
    ],
)
def test_reports_with_numbers_out_of_range_are_malformed(field: str, value: object, error: str) -> None:
    body = orjson.loads(encode(_report()))
    body[field] = value
    with pytest.raises(ProtocolError, match=error):
        decode(orjson.dumps(body))


def test_nan_and_infinity_never_parse() -> None:
    text = encode(_report()).replace(b'"loop_lag_ms":0.5', b'"loop_lag_ms":NaN')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode(text)


def test_float_field_accepts_int_but_flag_rejects_int() -> None:
    body = orjson.loads(encode(_report()))
    body["loop_lag_ms"] = 3
    assert decode(orjson.dumps(body)) == _report(loop_lag_ms=3)
    body["draining"] = 1
    with pytest.raises(ProtocolError, match="'draining' must be bool"):
        decode(orjson.dumps(body))


def test_typed_errors_survive_the_process_boundary() -> None:
    assert isinstance(error_from_kind("NotRunningError", "x"), NotRunningError)
    unknown = error_from_kind("InternalError", "y")
    assert isinstance(unknown, RemoteError) and unknown.kind == "InternalError"


def test_request_counts_alone_are_reported_at_most_every_busy_interval() -> None:
    """Under HTTP load the request counts change at every tick; a WebSocket, a drain, a bus or close-code counter is
    reported at the next tick all the same (ipc.stats.report_due)."""
    idle = Counts(http=3, websocket=5, in_flight=0, requests=100, websocket_sessions=5, draining=False)
    details: Details = ({}, {"1000": 2}, {})
    sent = (idle, details)
    busier = (idle._replace(http=9, in_flight=4, requests=180), details)
    assert not report_due(10.0, 10.0, sent, sent)
    assert not report_due(10.0 + REPORT_TICK_S, 10.0, busier, sent)
    assert report_due(10.0 + REPORT_BUSY_S, 10.0, busier, sent)
    prompts: list[tuple[Counts, Details]] = [
        (idle._replace(websocket=6, websocket_sessions=6), details),
        (idle._replace(draining=True), details),
        (idle, ({}, {"1000": 3}, {})),
        (idle, ({}, {"1000": 2}, {"max_header_bytes": 1})),
        (idle, ({"published": 1}, {"1000": 2}, {})),
    ]
    for prompt in prompts:
        assert report_due(10.0 + REPORT_TICK_S, 10.0, prompt, sent), prompt
    assert report_due(10.0 + HEARTBEAT_S, 10.0, sent, sent)  # nothing changed: the heartbeat report
    assert report_due(0.0, 0.0, sent, None)  # the first

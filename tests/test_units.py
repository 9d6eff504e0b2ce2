"""Unit tests of pure logic: message codec, config validation, restart backoff, worker state machine."""

from __future__ import annotations

import orjson
import pytest

from ipc.errors import ConfigError, NotRunningError, ProtocolError, RemoteError, error_from_kind
from ipc.messages import MAX_MESSAGE_BYTES, Failed, Ready, Reply, Report, Request, decode, encode
from ipc.settings import WorkerSpec, validate_app_path
from supervisor.config import SupervisorConfig, parse_instances
from supervisor.process.slots import BACKOFF_MAX_S, CRASH_LOOP_FAILURES, HEALTHY_RUN_S, Slot, restart_delay
from supervisor.process.worker_state import _TRANSITIONS, IllegalTransitionError, WorkerState, checked_transition


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
        (b'{"v":1,"t":"ready","pid":1,"slot":0,"generation":1,"extra":2}', "unknown field 'extra'"),
        (b'{"v":1,"t":"ready","pid":"1","slot":0,"generation":1}', "'pid' must be int, got str"),
        (b'{"v":1,"t":"ready","pid":true,"slot":0,"generation":1}', "'pid' must be int, got bool"),
    ],
)
def test_codec_rejects_bad_input(payload: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("(", r"\(").replace(")", r"\)")):
        decode(payload)


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


def test_parse_instances() -> None:
    assert parse_instances("4") == 4
    assert parse_instances("max") >= 1
    for bad in ("x", "1.5", "129", "-3"):
        with pytest.raises(ConfigError):
            parse_instances(bad)


@pytest.mark.parametrize("app", ["app:asgi", "pkg.mod:obj.attr", "_x:y"])
def test_valid_app_paths(app: str) -> None:
    assert validate_app_path(app) == app


@pytest.mark.parametrize("app", ["app", "app:", ":asgi", "a b:c", "app:asgi:x", "1mod:x"])
def test_invalid_app_paths(app: str) -> None:
    with pytest.raises(ConfigError, match="module:attribute"):
        validate_app_path(app)


def test_config_rejects_inconsistent_timeouts() -> None:
    with pytest.raises(ConfigError, match="heartbeat-timeout"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "heartbeat_timeout": 0.2})
    with pytest.raises(ConfigError, match="graceful-timeout must be between"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "graceful_timeout": 0})
    with pytest.raises(ConfigError, match="graceful-timeout must be between"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "graceful_timeout": float("nan")})
    with pytest.raises(ConfigError, match="unknown setting"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "gracefull_timeout": 1})


def test_settings_round_trip_through_the_worker_spec() -> None:
    config = SupervisorConfig.from_options({"app": "app:asgi", "workers": 2, "name": "x", "ws_drain_window": 0.5})
    spec = WorkerSpec(config.worker, 3, 1, 7, 42, "ipc:///s", "ipc:///i", "ipc:///o")
    assert WorkerSpec.from_json(spec.to_json()) == spec
    assert config.worker.ws_drain_window == 0.5 and config.worker.graceful_timeout == 30.0
    with pytest.raises(ConfigError, match="bad worker spec"):
        WorkerSpec.from_json('{"settings": 1}')


def test_restart_backoff_grows_and_caps() -> None:
    delays = [restart_delay(n) for n in range(12)]
    assert delays[0] == 0.0
    assert delays[1:5] == [0.25, 0.5, 1.0, 2.0]
    assert max(delays) == BACKOFF_MAX_S
    assert delays == sorted(delays)


def test_slot_failures_reset_after_a_healthy_run() -> None:
    slot = Slot(0)
    for _ in range(CRASH_LOOP_FAILURES):
        slot.record_exit(now=100.0, ready_for=None, error="ImportError")
    assert slot.crash_loop and slot.last_error == "ImportError"
    assert slot.next_start_at == 100.0 + restart_delay(CRASH_LOOP_FAILURES)
    delay = slot.record_exit(now=200.0, ready_for=HEALTHY_RUN_S + 1, error=None)
    assert delay == 0.0 and not slot.crash_loop and slot.last_error == "ImportError"


def test_worker_state_machine() -> None:
    assert WorkerState.READY in _TRANSITIONS[WorkerState.STARTING]
    assert WorkerState.READY not in _TRANSITIONS[WorkerState.DRAINING]
    assert not _TRANSITIONS[WorkerState.STOPPED]
    # Every state can reach STOPPED (a kill -9 can happen at any time) except STOPPED itself.
    assert all(
        WorkerState.STOPPED in allowed for state, allowed in _TRANSITIONS.items() if state is not WorkerState.STOPPED
    )
    assert checked_transition(1, WorkerState.READY, WorkerState.READY) is WorkerState.READY
    with pytest.raises(IllegalTransitionError, match="DRAINING -> READY"):
        checked_transition(1, WorkerState.DRAINING, WorkerState.READY)

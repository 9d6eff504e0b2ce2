"""Message types that cross process boundaries, and the one orjson codec that encodes and validates them.

Every message is a flat JSON object with a protocol version ``v`` and a type tag ``t``. Decoding checks the size,
the version, the tag and the type of every field, so a receiver can count and drop a bad message instead of
crashing on it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import orjson

from ipc.errors import ProtocolError

PROTOCOL_VERSION = 1
# Reports and control messages are a few hundred bytes; anything far larger is a bug or an attack.
MAX_MESSAGE_BYTES = 256 * 1024
# Every number is range-checked where it enters: a count from another process is negative, NaN or 2**64 one day,
# and arithmetic on it must never raise in the supervisor (or grow without bound). Counts fit in 2**53, exact in a
# float and far beyond what a worker reaches (a billion connections a second for over a hundred days).
MAX_COUNT = 1 << 53
_INT_RANGES: dict[str, tuple[int, int]] = {
    "pid": (1, (1 << 31) - 1),
    "slot": (0, 4095),
    "generation": (1, MAX_COUNT),
}
_FLOAT_RANGES: dict[str, tuple[float, float]] = {"loop_lag_ms": (0.0, 86_400_000.0)}
_MAX_TEXT = {"error": 16_384, "id": 128, "cmd": 64, "status": 16, "kind": 64}
_MAX_COUNTER_KEYS = 64  # a Report's ``bus``, ``closes`` and ``http_limits``: flat maps of short names to counts
_COUNTER_FIELDS = frozenset({"bus", "closes", "http_limits"})
_MAX_UNKNOWN_FIELDS = 16  # a newer peer's additions, not a flood of keys

JSONObject: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker imported the app, finished lifespan startup and is serving its slot's socket."""

    TAG: ClassVar[str] = "ready"
    pid: int
    slot: int
    generation: int


@dataclass(frozen=True, slots=True)
class Failed:
    """A worker could not start: import error, missing attribute, lifespan failure. ``error`` is for humans."""

    TAG: ClassVar[str] = "failed"
    pid: int
    slot: int
    generation: int
    error: str


@dataclass(frozen=True, slots=True)
class Report:
    """A worker's live counters. Sent from its event loop, so a report doubles as the loop's heartbeat."""

    TAG: ClassVar[str] = "report"
    pid: int
    slot: int
    generation: int
    seq: int
    http: int  # live HTTP connections (keep-alive idle or busy), WebSockets excluded
    websocket: int  # live WebSocket connections
    in_flight: int  # HTTP requests being handled right now
    requests: int  # HTTP responses completed since the worker started
    websocket_sessions: int  # WebSocket connections opened since the worker started
    loop_lag_ms: float  # how late the reporter's timer fired: the event loop's responsiveness
    draining: bool
    dropped_reports: int  # reports this worker could not send (ZeroMQ high-water mark)
    bus: JSONObject = field(default_factory=dict)  # broadcast-bus counters, filled in by ipc.bus
    closes: JSONObject = field(default_factory=dict)  # WebSocket sessions ended, by close code ("1000": n)
    # Connections the worker's HTTP limits refused or closed, by option (supervisor.worker.http_limits)
    http_limits: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """A control request from the CLI (or a script) to the supervisor."""

    TAG: ClassVar[str] = "request"
    id: str
    cmd: str
    args: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """The final answer to a Request: ``status`` is "ok" with a result, or "error" with a reason and error kind."""

    TAG: ClassVar[str] = "reply"
    id: str
    status: str
    result: JSONObject = field(default_factory=dict)
    reason: str = ""
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    """An intermediate event for a long request (a reload prints one line per slot)."""

    TAG: ClassVar[str] = "progress"
    id: str
    event: JSONObject


Message: TypeAlias = Ready | Failed | Report | Request | Reply | Progress

_TYPES: dict[str, type[Message]] = {cls.TAG: cls for cls in (Ready, Failed, Report, Request, Reply, Progress)}
_BUILTIN_CHECKS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "JSONObject": (dict,),
}


def _field_checks(cls: type[Message]) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Map each field to (accepted Python types, required) once per class, from its annotations."""
    hints = typing.get_type_hints(cls, localns={"JSONObject": JSONObject})
    checks: dict[str, tuple[tuple[type, ...], bool]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        name = "JSONObject" if hint == JSONObject else getattr(hint, "__name__", str(hint))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        checks[f.name] = (_BUILTIN_CHECKS[name], required)
    return checks


_CHECKS = {tag: _field_checks(cls) for tag, cls in _TYPES.items()}


def _check_range(tag: str, name: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        low, high = _INT_RANGES.get(name, (0, MAX_COUNT))
        if not low <= value <= high:
            raise ProtocolError(f"{tag} field {name!r} is out of range: {value} (expected {low}..{high})")
    elif isinstance(value, float):
        low_f, high_f = _FLOAT_RANGES.get(name, (0.0, float(MAX_COUNT)))
        if not low_f <= value <= high_f:  # also false for NaN
            raise ProtocolError(f"{tag} field {name!r} is out of range: {value}")
    elif isinstance(value, str):
        limit = _MAX_TEXT.get(name, 4096)
        if len(value) > limit:
            raise ProtocolError(f"{tag} field {name!r} is longer than {limit} characters")
    elif tag == Report.TAG and name in _COUNTER_FIELDS:
        _check_counters(name, value)


def _check_counters(name: str, counters: JSONObject) -> None:
    if len(counters) > _MAX_COUNTER_KEYS:
        raise ProtocolError(f"report field {name!r} has {len(counters)} counters (at most {_MAX_COUNTER_KEYS})")
    for key, count in counters.items():
        if len(key) > 64 or not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise ProtocolError(f"report field {name!r} has a bad counter {key[:64]!r}: {count!r:.64}")


def encode(message: Message) -> bytes:
    """Serialise a message. Field order is the dataclass order, after ``v`` and ``t``."""
    body: JSONObject = {"v": PROTOCOL_VERSION, "t": message.TAG}
    for f in dataclasses.fields(message):
        body[f.name] = getattr(message, f.name)
    return orjson.dumps(body)


def decode(data: bytes) -> Message:
    """Parse and validate one message; raise ProtocolError saying exactly what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(body).__name__}")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (expected {PROTOCOL_VERSION})")
    tag = body.pop("t", None)
    cls = _TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r}")
    checks = _CHECKS[cls.TAG]
    # A field this side does not know is left out, not refused: after wsup is upgraded in place, `wsup reload`
    # starts workers whose reports may carry fields the running (older) supervisor has never heard of, and it
    # must not take them for malformed and kill them as silent. The size limit above still bounds what is read.
    unknown = [name for name in body if name not in checks]
    if len(unknown) > _MAX_UNKNOWN_FIELDS:
        raise ProtocolError(f"{tag} message has {len(unknown)} unknown fields")
    for name in unknown:
        del body[name]
    for name, value in body.items():
        accepted, _ = checks[name]
        # bool is an int subclass: a count must not be True, a flag must not be 1.
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise ProtocolError(f"{tag} field {name!r} must be {accepted[0].__name__}, got {type(value).__name__}")
        _check_range(tag, name, value)
    missing = [name for name, (_, required) in checks.items() if required and name not in body]
    if missing:
        raise ProtocolError(f"{tag} message lacks field(s) {', '.join(missing)}")
    return cls(**body)

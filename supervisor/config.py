"""The instance's settings, validated once: the supervisor's own, and the workers' (``ipc.settings.WorkerSettings``).

Read by the CLI (which builds it from options) and by the supervisor process; light to import on purpose.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipc.bridge_wire import BridgeAddress, check_prefix, default_prefix
from ipc.errors import ConfigError
from ipc.settings import WorkerSettings, check_range, option
from supervisor.admin_address import AdminAddress, check_access, parse_admin

BALANCE_MODES = ("least-conn", "hash", "ip-hash")
MAX_LIFETIME_FLOOR_S = 1.0  # a shorter lifetime would spend the worker's whole life starting and draining
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_WORKERS = 128  # the steering program addresses slots with 8-bit jumps; far beyond any one host's need


def parse_instances(value: str, option: str = "-i/--instances") -> int:
    """``-i N`` or ``-i max`` (one worker per CPU), as PM2 accepts."""
    if value in ("max", "0", "-1"):
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"{option} must be a positive whole number or 'max', got {value!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"{option} must be between 1 and {MAX_WORKERS} (or 'max'), got {count}")
    return count


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "tuple[str, ...]": (tuple, list),
}
_KINDS = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false"}


def check_type(name: str, value: Any, annotation: str) -> None:
    """Refuse a value of the wrong type for a settings field (``bool`` is not a number here), naming the option;
    ranges are checked by the dataclasses themselves."""
    base, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return
    allowed = _TYPES.get(base)
    if allowed is None:
        return
    if isinstance(value, bool) and bool not in allowed:
        allowed = ()
    if not isinstance(value, allowed):
        expected = _KINDS.get(base, "a list of strings")
        label = "-i/--instances" if name == "workers" else option(name)
        raise ConfigError(f"{label} must be {expected}, got {type(value).__name__} {value!r}")


def parse_size(value: str | int, option: str = "--max-memory") -> int:
    """``512M``, ``1G``, ``1.5G``, ``300MiB`` or a number of bytes (binary units, as ``ps`` and ``free`` use)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _SIZE_UNITS else (text, "")
    try:
        size = float(number)
    except ValueError:
        raise ConfigError(f"{option} must be a size such as 512M or 1G, got {value!r}") from None
    if not size >= 0 or size == float("inf"):
        raise ConfigError(f"{option} must be a size such as 512M or 1G, got {value!r}")
    return int(size * _SIZE_UNITS[unit])


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    worker: WorkerSettings
    workers: int
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    balance: str = "least-conn"
    ready_timeout: float = 60.0  # how long a new worker may take to import the app and finish startup
    heartbeat_timeout: float = 30.0  # a worker whose event loop is silent this long is killed and replaced
    # A worker silent this long gets no new connections until it reports again. Under a burst on busy cores report
    # gaps of 0.5-0.8 s were measured, so this is the backstop; steering's tracker catches real stalls in ~0.2 s.
    stall_after: float = 1.0
    backlog: int = 2048
    # least-conn: a stream of short connections goes to one queue every worker accepts from (listeners.py).
    shared_queue: bool = True
    reload_batch: int = 1
    # Recycling (0: off): a worker past a limit is replaced like a reload's slot, one at a time.
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_lifetime: float = 0.0
    max_lifetime_jitter: float = 0.0
    max_memory: int = 0  # bytes of the worker's RSS
    recycle_concurrency: int = 1  # slots recycled at once (the recycler keeps it below the worker count)
    admin: str | None = None  # the admin endpoint's [HOST:]PORT (metrics, health, dashboard); off unless given
    admin_token: str | None = field(default=None, repr=False)  # required unless the admin endpoint is on loopback
    # Several hosts (docs: "Several hosts"). The bridge URL may hold a password: never print this field.
    bridge: str | None = dataclasses.field(default=None, repr=False)
    bridge_prefix: str | None = None  # default wsup:<name>:
    agent_port: int | None = None  # HAProxy agent-check; 0 picks a free port (shown in status)
    agent_host: str | None = None  # default: --host

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"-i/--instances must be between 1 and {MAX_WORKERS}, got {self.workers}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"--balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}")
        for name in ("ready_timeout", "heartbeat_timeout", "stall_after"):
            check_range(name, getattr(self, name), 0.001, 86400)
        if self.heartbeat_timeout <= self.stall_after:
            raise ConfigError(f"--heartbeat-timeout must be longer than the stall threshold ({self.stall_after:g}s)")
        if not os.path.isdir(self.worker.app_dir):
            raise ConfigError(f"--app-dir {self.worker.app_dir!r} is not a directory")
        check_range("backlog", self.backlog, 1, 1 << 20)
        if self.reload_batch < 1:
            raise ConfigError(f"--reload-batch must be at least 1, got {self.reload_batch}")
        check_range("max_requests", self.max_requests, 0, 1 << 53)
        check_range("max_requests_jitter", self.max_requests_jitter, 0, 1 << 53)
        check_range("max_lifetime_jitter", self.max_lifetime_jitter, 0, 10 * 365 * 86400)
        check_range("max_memory", self.max_memory, 0, 1 << 50)
        check_range("recycle_concurrency", self.recycle_concurrency, 1, MAX_WORKERS)
        if self.max_lifetime:
            check_range("max_lifetime", self.max_lifetime, MAX_LIFETIME_FLOOR_S, 10 * 365 * 86400)
        elif self.max_lifetime < 0:
            check_range("max_lifetime", self.max_lifetime, 0, 0)
        if self.admin is not None:
            check_access(parse_admin(self.admin), self.admin_token)

        if self.bridge is not None:
            BridgeAddress.parse(self.bridge)
            if importlib.util.find_spec("redis") is None:
                raise ConfigError("--bridge needs the redis client: pip install 'wsup[redis]'")
        if self.bridge_prefix is not None:
            check_prefix(self.bridge_prefix)
        if self.agent_port is not None:
            check_range("agent_port", self.agent_port, 0, 65535)

    @property
    def recycles(self) -> bool:
        return bool(self.max_requests or self.max_lifetime or self.max_memory)

    @property
    def admin_address(self) -> AdminAddress | None:
        return parse_admin(self.admin) if self.admin is not None else None

    @property
    def bridge_address(self) -> BridgeAddress | None:
        """The parsed --bridge (its password from the URL or WSUP_BRIDGE_PASSWORD), or None."""
        return BridgeAddress.parse(self.bridge) if self.bridge is not None else None

    @property
    def channel_prefix(self) -> str:
        return self.bridge_prefix if self.bridge_prefix is not None else default_prefix(self.name)

    @property
    def agent_address(self) -> tuple[str, int] | None:
        if self.agent_port is None:
            return None
        return (self.agent_host or self.host, self.agent_port)

    @property
    def app(self) -> str:
        return self.worker.app

    @property
    def graceful_timeout(self) -> float:
        return self.worker.graceful_timeout

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SupervisorConfig:
        """Build from flat options (``{"app": ..., "workers": 4, "graceful_timeout": 10}``): each key goes to the
        dataclass that has the field; a key neither has is an error that names it."""
        own = {f.name for f in dataclasses.fields(cls)} - {"worker"}
        theirs = {f.name for f in dataclasses.fields(WorkerSettings)}
        unknown = sorted(set(options) - own - theirs)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        annotations = {f.name: str(f.type) for f in (*dataclasses.fields(cls), *dataclasses.fields(WorkerSettings))}
        for key, value in options.items():
            check_type(key, value, annotations[key])
        worker = WorkerSettings(**{k: v for k, v in options.items() if k in theirs})
        return cls(worker=worker, **{k: v for k, v in options.items() if k in own})

"""The supervisor's settings, validated once, from the CLI or from code."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ipc.bus_queue import Policy, validate_limit
from ipc.bus_wire import DEFAULT_MAX_BYTES
from ipc.errors import ConfigError
from supervisor.app_loader import validate_app_path

BALANCE_MODES = ("least-conn", "hash")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
MAX_BUS_MAX_BYTES = 64 << 20  # one message is copied once per worker; beyond this, send a link to the data
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


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    app: str
    workers: int
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    factory: bool = False
    app_dir: str = "."
    log_level: str = "info"
    access_log: bool = True
    balance: str = "least-conn"
    graceful_timeout: float = 30.0  # drain budget of a worker before TERM→KILL escalation
    ready_timeout: float = 60.0  # how long a new worker may take to import the app and finish startup
    heartbeat_timeout: float = 30.0  # a worker whose event loop is silent this long is killed and replaced
    # A worker silent this long gets no new connections until it reports again. Under a burst on busy cores report
    # gaps of 0.5-0.8 s were measured, so this is the backstop; steering's tracker catches real stalls in ~0.2 s.
    stall_after: float = 1.0
    timeout_keep_alive: float = 5.0
    ws_drain_window: float = 2.0
    backlog: int = 2048
    reload_batch: int = 1
    bus_queue: int = 256  # per-subscriber backlog of the broadcast bus, in messages
    bus_policy: str = "drop-oldest"  # what a full backlog does: drop-oldest or disconnect
    bus_max_bytes: int = DEFAULT_MAX_BYTES  # largest message the bus accepts
    bus_coalesce_ms: float = 5.0  # under load, a client's messages of this window share one write (0: never)

    def __post_init__(self) -> None:
        validate_app_path(self.app)
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"-i/--instances must be between 1 and {MAX_WORKERS}, got {self.workers}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"--balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        for name in ("graceful_timeout", "ready_timeout", "heartbeat_timeout", "stall_after"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.heartbeat_timeout <= self.stall_after:
            raise ConfigError(f"--heartbeat-timeout must be longer than the stall threshold ({self.stall_after:g}s)")
        if not os.path.isdir(self.app_dir):
            raise ConfigError(f"--app-dir {self.app_dir!r} is not a directory")
        if self.reload_batch < 1:
            raise ConfigError(f"--reload-batch must be at least 1, got {self.reload_batch}")
        validate_limit(self.bus_queue)
        Policy.parse(self.bus_policy)
        if not 1 <= self.bus_max_bytes <= MAX_BUS_MAX_BYTES:
            raise ConfigError(f"--bus-max-bytes must be between 1 and {MAX_BUS_MAX_BYTES}, got {self.bus_max_bytes}")
        if not 0 <= self.bus_coalesce_ms <= 1000:
            raise ConfigError(f"--bus-coalesce-ms must be between 0 and 1000, got {self.bus_coalesce_ms}")

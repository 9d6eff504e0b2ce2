"""What the supervisor tells a worker process it spawns: one JSON document on the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from ipc.errors import ConfigError


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    app: str
    factory: bool
    app_dir: str
    fd: int  # the slot's listening socket, inherited through pass_fds
    slot: int
    generation: int
    supervisor_pid: int
    stats_endpoint: str
    bus_in: str
    bus_out: str
    log_level: str = "info"
    log_fd: int = -1  # where stderr goes once the worker is ready (see WorkerProcess.spawn)
    counters_fd: int = -1  # the shared page of its connection counters (ipc.counters), -1 for none
    access_log: bool = True
    timeout_keep_alive: float = 5.0
    graceful_timeout: float = 30.0
    ws_drain_window: float = 2.0  # WebSocket closes are spread over this window so clients do not reconnect at once
    idle_grace: float = 1.0  # an idle keep-alive connection of a draining worker is closed after this
    bus_queue: int = 256  # per-WebSocket-client bounded send queue of the broadcast bus
    bus_policy: str = "drop-oldest"
    bus_max_bytes: int = 1 << 20
    bus_coalesce_ms: float = 5.0  # a busy bus sends each client the messages of this window in one write

    def to_json(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        try:
            data: dict[str, Any] = orjson.loads(text)
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"bad worker spec: {exc}") from None

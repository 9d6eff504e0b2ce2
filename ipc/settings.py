"""What a worker process is told: the user's worker settings (defaults live here and nowhere else) and the spec of
one spawn (its slot, socket, generation and endpoints), passed as one JSON document on the worker's command line.

``WorkerSettings`` is owned by the supervisor's config (``SupervisorConfig.worker``): the CLI, a config file and the
supervisor all read the same fields, so no value is copied from one dataclass to another.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from ipc.bus_queue import Policy, validate_limit
from ipc.bus_wire import DEFAULT_MAX_BYTES
from ipc.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
MAX_BUS_MAX_BYTES = 64 << 20  # one message is copied once per worker; beyond this, send a link to the data
PASSWORD_ENV = "WSUP_SSL_KEYFILE_PASSWORD"  # how the key's password reaches a worker: never on a command line
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*$")
_APP_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def validate_app_path(app: str) -> str:
    """Check the ``module:attribute`` syntax without importing anything (the supervisor never imports the app)."""
    if not _APP_RE.match(app):
        raise ConfigError(f"APP must look like 'module:attribute' (e.g. 'app:asgi'), got {app!r}")
    return app


def option(name: str) -> str:
    """A field's command-line spelling, for error messages: ``graceful_timeout`` -> ``--graceful-timeout``."""
    return "--" + name.replace("_", "-")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Refuse a value outside ``[low, high]`` (and NaN), naming the option."""
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{option(name)} must be between {low:g} and {high:g}, got {value}")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The user's settings that every worker of an instance runs with."""

    app: str
    factory: bool = False
    app_dir: str = "."
    log_level: str = "info"
    access_log: bool = True
    timeout_keep_alive: float = 5.0
    graceful_timeout: float = 30.0  # drain budget of a worker before TERM→KILL escalation
    ws_drain_window: float = 2.0  # WebSocket closes are spread over this window so clients do not reconnect at once
    ws_drain_rate: float = 1000.0  # ...widened so that at most this many a second reconnect (0: no pacing)
    idle_grace: float = 1.0  # an idle keep-alive connection of a draining worker is closed after this
    bus_queue: int = 256  # per-WebSocket-client bounded send queue of the broadcast bus, in messages
    bus_policy: str = "drop-oldest"  # what a full queue does: drop-oldest or disconnect
    bus_max_bytes: int = DEFAULT_MAX_BYTES  # largest message the bus accepts
    bus_coalesce_ms: float = 5.0  # under load, a client's messages of this window share one write (0: never)
    # Passed to uvicorn in each worker, with uvicorn's names, meanings and defaults.
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile_password: str | None = field(default=None, repr=False)  # never in a spec, a log or `wsup config`
    ssl_ca_certs: str | None = None
    proxy_headers: bool = True
    forwarded_allow_ips: str | None = None  # None: uvicorn's $FORWARDED_ALLOW_IPS, else 127.0.0.1
    root_path: str = ""
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float | None = 20.0
    ws_ping_timeout: float | None = 20.0
    ws_per_message_deflate: bool = True
    limit_concurrency: int | None = None
    env_file: str | None = None  # loaded in each worker before the app is imported (python-dotenv, no override)
    header: tuple[str, ...] = ()  # extra response headers, "Name: value"
    log_file: str | None = None  # where the supervisor and workers log; None: the supervisor's stderr
    log_format: str = "text"  # text, or json: one object per line
    # HTTP limits (supervisor.worker.http_limits): what one client may cost a worker.
    max_header_bytes: int = 64 * 1024  # request line + headers; more is answered 431 and the connection closed
    header_timeout: float = 20.0  # from a request's first byte to the end of its headers (slowloris); 0: off
    idle_timeout: float = 10.0  # a new connection that sends nothing this long is closed; 0: off
    max_connections: int = 0  # per worker, past it new connections get 503; 0: the descriptor limit less 128

    def __post_init__(self) -> None:
        validate_app_path(self.app)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        check_range("timeout_keep_alive", self.timeout_keep_alive, 0, 3600)
        check_range("graceful_timeout", self.graceful_timeout, 0.1, 86400)
        check_range("ws_drain_window", self.ws_drain_window, 0, 3600)
        check_range("ws_drain_rate", self.ws_drain_rate, 0, 10_000_000)
        check_range("idle_grace", self.idle_grace, 0, 3600)
        validate_limit(self.bus_queue)
        Policy.parse(self.bus_policy)
        check_range("bus_max_bytes", self.bus_max_bytes, 1, MAX_BUS_MAX_BYTES)
        check_range("bus_coalesce_ms", self.bus_coalesce_ms, 0, 1000)
        check_range("max_header_bytes", self.max_header_bytes, 1024, 16 << 20)
        check_range("header_timeout", self.header_timeout, 0, 3600)
        check_range("idle_timeout", self.idle_timeout, 0, 3600)
        check_range("max_connections", self.max_connections, 0, 10_000_000)
        self._check_uvicorn_options()
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.log_file is not None and (not self.log_file or "\0" in self.log_file):
            raise ConfigError(f"--log-file must be a file path, got {self.log_file!r}")

    def _check_uvicorn_options(self) -> None:
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ConfigError("--ssl-keyfile and --ssl-certfile go together: give both, or neither")
        for name in ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "env_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{option(name)} {path!r} is not a readable file")
        check_range("ws_max_size", self.ws_max_size, 1, 1 << 31)
        for name in ("ws_ping_interval", "ws_ping_timeout"):
            value = getattr(self, name)
            if value is not None:
                check_range(name, value, 0, 86400)
        if self.limit_concurrency is not None:
            check_range("limit_concurrency", self.limit_concurrency, 1, 1 << 24)
        if self.root_path and not self.root_path.startswith("/"):
            raise ConfigError(f"--root-path must start with '/', got {self.root_path!r}")
        for header in self.header:
            if not _HEADER_RE.match(header):
                raise ConfigError(f"--header must look like 'Name: value', got {header!r}")

    @property
    def uses_tls(self) -> bool:
        return self.ssl_certfile is not None

    def headers(self) -> list[tuple[str, str]]:
        """``--header`` values as uvicorn's ``(name, value)`` pairs."""
        pairs = (header.split(":", 1) for header in self.header)
        return [(name.strip(), value.strip()) for name, value in pairs]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker process: the instance's settings plus what is particular to this spawn."""

    settings: WorkerSettings
    fd: int  # the slot's listening socket, inherited through pass_fds
    slot: int
    generation: int
    supervisor_pid: int
    stats_endpoint: str
    bus_in: str
    bus_out: str
    log_fd: int = -1  # where stderr goes once the worker is ready (see WorkerProcess.spawn)
    counters_fd: int = -1  # the shared page of its connection counters (ipc.counters), -1 for none
    shared_fd: int = -1  # the listening socket every worker accepts from (supervisor.process.listeners), -1: none

    def to_json(self) -> str:
        """The spec for the worker's command line, which anyone on the host can read: the key's password is left
        out (it goes through the environment, ``PASSWORD_ENV``)."""
        data = dataclasses.asdict(self)
        data["settings"]["ssl_keyfile_password"] = None
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        try:
            data: dict[str, Any] = orjson.loads(text)
            raw = data.pop("settings")
            raw["header"] = tuple(raw.get("header") or ())
            settings = WorkerSettings(**raw)
            return cls(settings=settings, **data)
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"bad worker spec: {exc}") from None


def defaults(cls: type[Any]) -> dict[str, Any]:
    """The default of every field of a settings dataclass that has one (for ``--help`` and ``wsup config``)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

"""The options of `wsup start` (also parsed by `wsup config` and `wsup systemd-unit`) as argparse definitions (runs
in the user's shell). Every one is SUPPRESSed when not given: its default lives in the config classes, and the
config file (``config_file.py``) knows each option by its long name from these definitions.
"""

from __future__ import annotations

import argparse

from ipc.errors import ConfigError
from ipc.settings import WorkerSettings, defaults
from supervisor.config import SupervisorConfig, parse_size

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def size(value: str) -> int:
    """argparse type of ``--max-memory``: ``512M``, ``1G``, or bytes."""
    try:
        return parse_size(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def boolean(value: str) -> bool:
    """argparse type of uvicorn's ``--ws-per-message-deflate BOOLEAN``."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_start_options(start: argparse.ArgumentParser) -> None:
    """Options left out stay out of the namespace: their defaults live in ``SupervisorConfig``/``WorkerSettings``."""
    d = {**defaults(SupervisorConfig), **defaults(WorkerSettings)}
    start.add_argument(
        "app",
        metavar="APP",
        nargs="?",
        help="the ASGI app as module:attribute, e.g. app:asgi (default: the config file's)",
    )
    start.add_argument(
        "--config", metavar="FILE", help="config file (default ./wsup.toml, or [tool.wsup] in pyproject.toml)"
    )
    start.add_argument("-i", "--instances", help="worker processes: a number or 'max' (default 1)")
    start.add_argument("--host", help=f"address to listen on (default {d['host']})")
    start.add_argument("--port", type=int, help=f"port to listen on (default {d['port']}; 0 picks one)")
    start.add_argument("--name", help="instance name (default: the app's module name)")
    start.add_argument("--daemon", action="store_true", help="run in the background; return once ready")
    start.add_argument("--log-level", help="critical|error|warning|info|debug|trace (default info)")
    start.add_argument(
        "--log-file",
        help="where the supervisor and workers log (default: the terminal; with --daemon, <run dir>/NAME.log);"
        " reopened on SIGUSR1, for logrotate",
    )
    start.add_argument("--log-format", help="text, or json: one JSON object per line (default text)")
    start.add_argument("--factory", action="store_true", help="APP is a callable that returns the ASGI app")
    start.add_argument("--app-dir", help="directory to import APP from (default: current)")
    start.add_argument("--access-log", action=argparse.BooleanOptionalAction, help="log every request (default on)")
    start.add_argument(
        "--balance",
        help=f"least-conn (steer by live connections), ip-hash (one client address, one worker: sticky sessions)"
        f" or hash (default {d['balance']})",
    )
    start.add_argument(
        "--shared-queue",
        action=argparse.BooleanOptionalAction,
        help="least-conn: send a stream of short connections to one queue all workers accept from (default on)",
    )
    start.add_argument(
        "--graceful-timeout", type=float, help=f"drain budget per worker (s, default {d['graceful_timeout']:g})"
    )
    start.add_argument(
        "--ready-timeout", type=float, help=f"time a new worker has to get ready (s, default {d['ready_timeout']:g})"
    )
    start.add_argument(
        "--heartbeat-timeout",
        type=float,
        help=f"replace a worker whose event loop is silent this long (s, default {d['heartbeat_timeout']:g})",
    )
    start.add_argument(
        "--ws-drain-window",
        type=float,
        help=f"spread WebSocket closes of a draining worker over this window (s, default {d['ws_drain_window']:g})",
    )
    start.add_argument(
        "--ws-drain-rate",
        type=float,
        help="widen that window so at most this many WebSocket clients a second reconnect"
        f" (0: no pacing; default {d['ws_drain_rate']:g})",
    )
    start.add_argument(
        "--reload-batch", type=int, help=f"slots replaced at once by a reload (default {d['reload_batch']})"
    )
    start.add_argument(
        "--bus-queue", type=int, help=f"broadcast backlog per subscriber (messages, default {d['bus_queue']})"
    )
    start.add_argument(
        "--bus-policy", help=f"full backlog: drop-oldest, or disconnect (close code 1013) (default {d['bus_policy']})"
    )
    start.add_argument(
        "--bus-max-bytes", type=int, help=f"largest broadcast message (bytes, default {d['bus_max_bytes']})"
    )
    start.add_argument(
        "--bus-coalesce-ms",
        type=float,
        help="under load, send each client the broadcasts of this window in one write"
        f" (0: never; default {d['bus_coalesce_ms']:g})",
    )
    start.add_argument(
        "--admin",
        metavar="[HOST:]PORT",
        help="serve /metrics (Prometheus), /health, /status and a live dashboard at / from the supervisor"
        " (off by default; HOST defaults to 127.0.0.1, loopback only: any other HOST needs a token)",
    )
    start.add_argument(
        "--admin-token",
        help="token the admin endpoint requires (Authorization: Bearer, or ?token=); prefer the WSUP_ADMIN_TOKEN"
        " environment variable, which other users cannot read in the process list",
    )
    add_recycling(start)
    add_uvicorn(start)
    start.add_argument(
        "--bridge",
        metavar="URL",
        help="relay the bus between hosts through Redis: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://"
        " (the password may come from WSUP_BRIDGE_PASSWORD instead)",
    )
    start.add_argument("--bridge-prefix", help="prefix of the Redis channels (default wsup:NAME:)")
    start.add_argument("--agent-port", type=int, help="answer HAProxy's agent-check on this port (0 picks one)")
    start.add_argument("--agent-host", help="address the agent-check listens on (default: --host)")
    start.add_argument(
        "--max-header-bytes",
        type=int,
        help=f"request line + headers a client may send; more gets 431 (default {d['max_header_bytes']})",
    )
    start.add_argument(
        "--header-timeout",
        type=float,
        help=f"seconds a request may take to send its headers, 0: off (default {d['header_timeout']:g})",
    )
    start.add_argument(
        "--idle-timeout",
        type=float,
        help=f"close a new connection that sends nothing this long (s), 0: off (default {d['idle_timeout']:g})",
    )
    start.add_argument(
        "--max-connections",
        type=int,
        help="connections per worker; more get 503 (default 0: the descriptor limit less 128)",
    )
    start.add_argument("--notify-fd", type=int, help=argparse.SUPPRESS)


def add_recycling(start: argparse.ArgumentParser) -> None:
    group = start.add_argument_group("recycling (zero-downtime: replacement ready first, then the old worker drains)")
    group.add_argument("--max-requests", type=int, metavar="N", help="recycle a worker after N HTTP requests (0: off)")
    group.add_argument(
        "--max-requests-jitter", type=int, metavar="J", help="add 0..J to each worker's --max-requests (drawn once)"
    )
    group.add_argument("--max-lifetime", type=float, metavar="SECONDS", help="recycle a worker this old (0: off)")
    group.add_argument(
        "--max-lifetime-jitter", type=float, metavar="SECONDS", help="add 0..SECONDS to each worker's --max-lifetime"
    )
    group.add_argument(
        "--max-memory", type=size, metavar="SIZE", help="recycle a worker whose RSS reaches SIZE (512M, 1G; 0: off)"
    )
    group.add_argument(
        "--recycle-concurrency",
        type=int,
        metavar="N",
        help="recycle up to N slots at once (default 1; never all workers) when one at a time cannot keep up",
    )


def add_uvicorn(start: argparse.ArgumentParser) -> None:
    """uvicorn's options, with its names, meanings and defaults."""
    group = start.add_argument_group("passed to uvicorn in each worker")
    group.add_argument("--ssl-keyfile", metavar="FILE", help="TLS private key (PEM)")
    group.add_argument("--ssl-certfile", metavar="FILE", help="TLS certificate chain (PEM); a reload re-reads both")
    group.add_argument(
        "--ssl-keyfile-password",
        metavar="PASSWORD",
        help="password of the key; prefer --ssl-keyfile-password-file or $WSUP_SSL_KEYFILE_PASSWORD (never shown)",
    )
    group.add_argument("--ssl-keyfile-password-file", metavar="FILE", help="read the key's password from FILE")
    group.add_argument("--ssl-ca-certs", metavar="FILE", help="CA certificates file")
    group.add_argument("--timeout-keep-alive", type=int, metavar="SECONDS", help="close idle keep-alive after (5)")
    group.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        help="trust X-Forwarded-Proto/For from --forwarded-allow-ips (default on)",
    )
    group.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses/networks trusted for proxy headers, or '*' (default $FORWARDED_ALLOW_IPS"
        " or 127.0.0.1)",
    )
    group.add_argument("--root-path", metavar="PATH", help="ASGI root_path, for an app mounted below a path prefix")
    group.add_argument("--ws-max-size", type=int, metavar="BYTES", help="largest WebSocket message (16777216)")
    group.add_argument("--ws-ping-interval", type=float, metavar="SECONDS", help="WebSocket ping interval (20)")
    group.add_argument("--ws-ping-timeout", type=float, metavar="SECONDS", help="WebSocket ping timeout (20)")
    group.add_argument(
        "--ws-per-message-deflate", type=boolean, metavar="BOOLEAN", help="WebSocket permessage-deflate (true)"
    )
    group.add_argument(
        "--limit-concurrency", type=int, metavar="N", help="answer 503 past N connections + tasks per worker"
    )
    group.add_argument("--env-file", metavar="FILE", help="load these environment variables before importing APP")
    group.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="add a response header (repeatable)")

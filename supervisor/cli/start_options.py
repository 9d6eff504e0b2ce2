"""`wsup start` options for recycling, TLS and the uvicorn settings passed through to each worker (runs in the
user's shell). Like every start option, they are SUPPRESSed when not given: defaults live in the config classes.
"""

from __future__ import annotations

import argparse

from ipc.errors import ConfigError
from supervisor.config import parse_size

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

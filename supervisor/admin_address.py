"""The admin endpoint's address (``--admin [HOST:]PORT``) and its access rule: loopback is open, anything else needs
a token. Read by the CLI (to refuse a bad option before anything starts) and by the supervisor; light to import."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from ipc.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
TOKEN_ENV = "WSUP_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16  # a guessable token on a reachable port is no protection


class AdminAddress(NamedTuple):
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name may resolve to anything: treat it as reachable from outside


def parse_admin(value: str) -> AdminAddress:
    """``9100``, ``127.0.0.1:9100``, ``[::1]:9100`` or ``0.0.0.0:9100``."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"--admin: write an IPv6 address in brackets, e.g. [::1]:9100, got {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--admin must be [HOST:]PORT, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--admin port must be between 0 and 65535, got {port}")
    if not host or any(c.isspace() or c in "/@#?" for c in host):
        raise ConfigError(f"--admin: bad host in {value!r}")
    return AdminAddress(host, port)


def check_access(address: AdminAddress, token: str | None) -> None:
    """Refuse an admin endpoint reachable from outside without a token, and a token too short to protect it."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"--admin-token must be at least {MIN_TOKEN_CHARS} characters")
    if token is None and not address.loopback:
        raise ConfigError(
            f"--admin {address.host}:{address.port} is reachable from other hosts: give a token with"
            f" {TOKEN_ENV}=... (or --admin-token), or bind it to loopback"
        )

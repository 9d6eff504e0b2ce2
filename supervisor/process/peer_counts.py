"""How many of this host's connections come from a given remote address, from the kernel's socket tables
(``/proc/net/tcp`` and ``tcp6``); read by the supervisor when a balancer asks the agent-check.

A balancer knows only the connections it made itself. The agent tells it which share of the host's real load that
is: connections established to our port from the address the agent-check came from (the balancer's), against all
the host's connections. Reading the tables costs about a microsecond per socket on the machine; a read serves every
check within ``MAX_AGE_S``.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from typing import Final

logger = logging.getLogger("wsup.agent")

TABLES: Final = ("/proc/net/tcp", "/proc/net/tcp6")
ESTABLISHED: Final = "01"  # st column, include/net/tcp_states.h
MAX_AGE_S: Final = 0.25


def _address(hex_address: str) -> str:
    """``0100007F`` → ``127.0.0.1``; an IPv6 address is four 32-bit words, each in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def normalize(peer: str) -> str:
    """A peer address as asyncio reports it, in the form ``_address`` gives (IPv4-mapped IPv6 as IPv4)."""
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


def count_by_peer(port: int, local: str = "", tables: tuple[str, ...] = TABLES) -> Counter[str]:
    """Established connections to local ``port`` (on address ``local``, or any for a wildcard), counted by remote
    address. Several instances may share a port on different addresses: each counts its own."""
    suffix = f":{port:04X}"
    any_local = local in WILDCARDS
    local = normalize(local)
    counts: Counter[str] = Counter()
    for table in tables:
        try:
            with open(table, encoding="ascii") as file:
                next(file, None)  # the header
                for line in file:
                    fields = line.split(None, 4)
                    if len(fields) < 4 or fields[3] != ESTABLISHED or not fields[1].endswith(suffix):
                        continue
                    if not any_local and _address(fields[1].rsplit(":", 1)[0]) != local:
                        continue
                    counts[_address(fields[2].rsplit(":", 1)[0])] += 1
        except (OSError, ValueError) as exc:  # no IPv6 table, or a line we cannot read: count what we could
            logger.debug("cannot read %s: %s", table, exc)
    return counts


class PeerCounts:
    """``count_by_peer`` for one listening address, cached for ``MAX_AGE_S``."""

    def __init__(self, port: int, local: str = "") -> None:
        self.port = port
        self.local = local
        self._at = -MAX_AGE_S
        self._counts: Counter[str] = Counter()

    def from_peer(self, peer: str) -> int:
        now = time.monotonic()
        if now - self._at >= MAX_AGE_S:
            self._counts = count_by_peer(self.port, self.local)
            self._at = now
        return self._counts.get(normalize(peer), 0)

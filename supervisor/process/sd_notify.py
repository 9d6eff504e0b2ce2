"""systemd's notification protocol (``sd_notify(3)``), without libsystemd (supervisor process).

With ``Type=notify``, systemd passes ``NOTIFY_SOCKET`` (a path, or an abstract socket name starting with '@') and,
with ``WatchdogSec=``, ``WATCHDOG_USEC``. Each notification is one datagram of ``KEY=VALUE`` lines. Without
``NOTIFY_SOCKET`` every call is a no-op; a send that fails is counted, never raised: systemd's absence or a full
socket must not disturb the supervisor.
"""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger("wsup.supervisor")


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self._address: str | bytes | None = None
        if address:
            # An abstract socket: '@' stands for the leading NUL byte.
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None  # ping at half the timeout
        self.failed = 0

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        address = os.environ.get("NOTIFY_SOCKET")
        watchdog: int | None = None
        try:
            watchdog = int(os.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            watchdog = None
        watchdog_pid = os.environ.get("WATCHDOG_PID")
        if watchdog is not None and (watchdog <= 0 or (watchdog_pid and watchdog_pid != str(os.getpid()))):
            watchdog = None  # meant for another process (systemd sets the pid it watches)
        # Our workers must not inherit these: they would notify (and be taken for) the service's main process.
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        return cls(address, watchdog if address else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        if self._address is None:
            return False
        text = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), self._address)
            return True
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                logger.warning("systemd notification failed: %s", exc)
            return False

    def notify_reloading(self) -> None:
        """RELOADING=1 needs the time it started, on the monotonic clock, in microseconds."""
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000, STATUS="reloading")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: object) -> str:
    return str(value).replace("\n", " ")[:1000]

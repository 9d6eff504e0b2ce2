"""The kernel's view of a listening socket: how many connections wait in its accept queue, read from TCP_INFO.

A queue that grows while its worker reports few connections means that worker is not keeping up (a blocked
event loop, a slow startup), which the steering policy weighs before the worker's own stats say so.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence

# struct tcp_info (<linux/tcp.h>) opens with eight u8 fields (state, ca_state, retransmits, probes, backoff,
# options, the wscale nibbles, a bitfield byte), then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked... For a
# listener the kernel reuses two of them (tcp_get_info): tcpi_unacked = sk_ack_backlog, the connections in the
# accept queue, and tcpi_sacked = sk_max_ack_backlog, the backlog given to listen() (capped by somaxconn).
# Verified on Linux 6.18 with 3 un-accepted connections and listen(17): offsets 24 and 28 held 3 and 17.
_STATE_OFFSET = 0
_QUEUE = struct.Struct("=II")  # tcpi_unacked, tcpi_sacked
_QUEUE_OFFSET = 24
# The kernel copies min(asked, its own size); the two fields have been at these offsets since Linux 2.6.
TCP_INFO_LENGTH = 104
TCP_LISTEN = 10  # tcpi_state of a listening socket (enum in include/net/tcp_states.h)


def accept_queue(sock: socket.socket) -> tuple[int, int]:
    """Return ``(queued connections, backlog)`` of the listening TCP socket ``sock``.

    Raises ``OSError`` where TCP_INFO is not available (not Linux), and ``ValueError`` if ``sock`` is not
    listening: other sockets use the two fields for something else.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        raise OSError(errno.ENOPROTOOPT, "TCP_INFO is not available on this platform")
    info = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_LENGTH)
    if len(info) < _QUEUE_OFFSET + _QUEUE.size:
        raise OSError(errno.ENOPROTOOPT, f"TCP_INFO returned only {len(info)} bytes")
    state = info[_STATE_OFFSET]
    if state != TCP_LISTEN:
        raise ValueError(f"the socket is not listening (tcpi_state {state}, expected {TCP_LISTEN})")
    queued, backlog = _QUEUE.unpack_from(info, _QUEUE_OFFSET)
    return queued, backlog


def queued_in(sockets: Sequence[socket.socket], index: int) -> int:
    """Connections waiting in ``sockets[index]``'s accept queue, or 0 when that cannot be read: no such socket (a
    slot being added or removed), no TCP_INFO (not Linux), or a socket closed or no longer listening."""
    try:
        return accept_queue(sockets[index])[0]
    except (OSError, ValueError, IndexError):
        return 0

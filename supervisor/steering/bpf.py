"""The classic BPF program that steers new connections across the slots of an SO_REUSEPORT group.

It builds a weighted random choice (``random % total``, then a chain of ``jge``/``ret``) and attaches it to or
detaches it from the group (``SO_ATTACH_REUSEPORT_CBPF``, no privileges needed). ``ip_hash`` builds the other
program (sticky by client address); ``bpf_eval`` interprets both for tests.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import TypeAlias

from ipc.errors import WsupError

# (code, jt, jf, k): one `struct sock_filter`.
Instruction: TypeAlias = tuple[int, int, int, int]

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68

# Opcode parts from <linux/filter.h> / <linux/bpf_common.h>.
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x04, 0x05, 0x06, 0x07
BPF_W, BPF_B, BPF_ABS = 0x00, 0x10, 0x20
BPF_MUL, BPF_AND, BPF_RSH, BPF_MOD, BPF_XOR = 0x20, 0x50, 0x70, 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGE = 0x00, 0x10, 0x30
BPF_K, BPF_X = 0x00, 0x08
BPF_TAX = 0x00

LD_RANDOM = BPF_LD | BPF_W | BPF_ABS
MOD_K = BPF_ALU | BPF_MOD | BPF_K
JGE_K = BPF_JMP | BPF_JGE | BPF_K
RET_K = BPF_RET | BPF_K
LD_W_ABS = BPF_LD | BPF_W | BPF_ABS
LD_B_ABS = BPF_LD | BPF_B | BPF_ABS
MUL_K = BPF_ALU | BPF_MUL | BPF_K
AND_K = BPF_ALU | BPF_AND | BPF_K
RSH_K = BPF_ALU | BPF_RSH | BPF_K
XOR_X = BPF_ALU | BPF_XOR | BPF_X
JEQ_K = BPF_JMP | BPF_JEQ | BPF_K
JA = BPF_JMP | BPF_JA
TAX = BPF_MISC | BPF_TAX

# An absolute load at SKF_AD_OFF + SKF_AD_RANDOM is not a packet read: the kernel replaces it with a fresh
# prandom u32, which is what makes the program a random choice rather than a hash.
SKF_AD_OFF = -0x1000
SKF_AD_RANDOM = 56
RANDOM_OFFSET = (SKF_AD_OFF + SKF_AD_RANDOM) & 0xFFFFFFFF
# Absolute loads at SKF_NET_OFF + n read byte n of the packet's network header (the IP header): a reuseport
# program's packet data starts at the transport header, so this is how it reaches the client's address.
SKF_NET_OFF = -0x100000

# Any index >= the number of sockets in the group makes reuseport_select_sock() fall back to its own hash
# (run_bpf_filter returns NULL). The largest u32 can never be a real index, however large the group grows.
HASH_FALLBACK = 0xFFFFFFFF

# The kernel rejects longer classic programs with EINVAL (BPF_MAXINSNS). The builder emits 2m + 1 instructions
# for m eligible slots, so this allows 2,047 of them, far more than anyone runs workers.
BPF_MAXINSNS = 4096
MAX_TOTAL_WEIGHT = 2**31

_U8, _U16, _U32 = 0xFF, 0xFFFF, 0xFFFFFFFF
_FILTER = struct.Struct("@HBBI")  # struct sock_filter, native layout: 8 bytes, no padding


class SteeringUnavailableError(WsupError):
    """The kernel refused to attach or detach the steering program; ``errno`` says why (None: not Linux)."""

    def __init__(self, message: str, errno_value: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_value


def build_weighted_program(weights: Sequence[int]) -> list[Instruction]:
    """Return a program that picks slot ``i`` with probability ``weights[i] / sum(weights)``.

    Slots with weight 0 are never returned. If every weight is 0 (no slot eligible), the program returns
    ``HASH_FALLBACK``, which makes the kernel use its hash: with nothing eligible it is better to spread
    connections than to refuse them, and connections queued on a slot are served once its worker is up again.
    """
    for slot, weight in enumerate(weights):
        if weight < 0:
            raise ValueError(f"weight of slot {slot} is {weight}; weights must be >= 0")
    total = sum(weights)
    if total > MAX_TOTAL_WEIGHT:
        raise ValueError(f"weights sum to {total}; the total must be at most 2**31 ({MAX_TOTAL_WEIGHT})")
    if total == 0:
        return [(RET_K, 0, 0, HASH_FALLBACK)]
    eligible = [(slot, weight) for slot, weight in enumerate(weights) if weight > 0]
    length = 2 * len(eligible) + 1
    if length > BPF_MAXINSNS:
        raise ValueError(f"{len(eligible)} weighted slots need {length} instructions (max {BPF_MAXINSNS})")

    program: list[Instruction] = [(LD_RANDOM, 0, 0, RANDOM_OFFSET), (MOD_K, 0, 0, total)]
    cumulative = 0
    for slot, weight in eligible[:-1]:
        cumulative += weight
        # A < cumulative falls through to this slot's ret; otherwise jt=1 skips it to the next comparison.
        # Every jump is one instruction long, so jt/jf fit in a u8 whatever the number of slots.
        program.append((JGE_K, 1, 0, cumulative))
        program.append((RET_K, 0, 0, slot))
    # The last eligible slot needs no comparison: A < total always holds here.
    program.append((RET_K, 0, 0, eligible[-1][0]))
    return program


def pack_program(instructions: Sequence[Instruction]) -> bytes:
    """Return the ``struct sock_filter`` array for ``instructions``, in native byte order."""
    parts = []
    for index, (code, jt, jf, k) in enumerate(instructions):
        if not (0 <= code <= _U16 and 0 <= jt <= _U8 and 0 <= jf <= _U8 and 0 <= k <= _U32):
            fields = (code, jt, jf, k)
            raise ValueError(f"instruction {index} {fields} does not fit struct sock_filter (u16,u8,u8,u32)")
        parts.append(_FILTER.pack(code, jt, jf, k))
    return b"".join(parts)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    # ctypes lays this out like the C compiler: on 64-bit, 6 bytes of padding follow `len` so the pointer is
    # 8-aligned (16 bytes in all), which is what the kernel's copy_from_user of struct sock_fprog expects.
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def attach_program(sock: socket.socket, instructions: Sequence[Instruction]) -> None:
    """Attach ``instructions`` to the reuseport group of ``sock``, atomically replacing any previous program.

    ``sock`` must already be listening: a socket that is not yet in the group would get a private group of its
    own, and the program would steer nothing. Raises ``SteeringUnavailableError`` if the kernel refuses; the
    previously attached program, if any, then stays in effect (``detach_program`` restores the hash).
    """
    _require_linux()
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("attach the steering program through a socket that is already listening")
    packed = pack_program(instructions)
    count = len(instructions)
    if not 1 <= count <= BPF_MAXINSNS:
        raise ValueError(f"a program has 1 to {BPF_MAXINSNS} instructions, not {count}")
    # The kernel copies the array during setsockopt(); `filters` must stay referenced until the call returns,
    # because the bytes of `fprog` only hold its address.
    filters = (_SockFilter * count).from_buffer_copy(packed)
    fprog = _SockFprog(count, ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError as exc:
        raise _unavailable("attach", exc) from exc


def detach_program(sock: socket.socket) -> None:
    """Remove the group's steering program, so the kernel uses its hash again; a no-op if none is attached."""
    _require_linux()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return  # nothing attached (or no group yet): connections already go by the hash
        raise _unavailable("detach", exc) from exc


def _require_linux() -> None:
    # Elsewhere SOL_SOCKET option 51 is not this option (or is a different option altogether): never send it.
    if not sys.platform.startswith("linux"):
        raise SteeringUnavailableError(
            f"connection steering needs Linux (SO_ATTACH_REUSEPORT_CBPF); this is {sys.platform}"
        )


_MEANINGS = {
    errno.ENOPROTOOPT: "the kernel does not know the option (attach needs Linux 4.5+, detach 5.3+)",
    errno.EPERM: "the socket's filter is locked (SO_LOCK_FILTER)",
    errno.EINVAL: "the socket has no SO_REUSEPORT group, or the kernel's checker rejected the program",
    errno.ENOMEM: "the program is larger than net.core.optmem_max allows",
    errno.EFAULT: "the kernel could not read the program (bad struct sock_fprog layout)",
    errno.EBADF: "the socket is closed",
}


def _unavailable(action: str, exc: OSError) -> SteeringUnavailableError:
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "unknown errno"
    meaning = _MEANINGS.get(code, os.strerror(code)) if code is not None else str(exc)
    return SteeringUnavailableError(
        f"cannot {action} the connection-steering program ({name}: {meaning})",
        code,
    )

"""An interpreter of the classic BPF subset wsup's steering programs use, for tests: no kernel needed.

It runs a program as the kernel would for one SYN: ``random_value`` is what the ancillary random load returns,
``network_header`` the packet's IP header that ``SKF_NET_OFF`` loads read. Anything the builders never emit is
rejected with the instruction's index, so a test cannot pass on an instruction the interpreter got wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.steering.bpf import (
    AND_K,
    JA,
    JEQ_K,
    JGE_K,
    LD_B_ABS,
    LD_W_ABS,
    MOD_K,
    MUL_K,
    RANDOM_OFFSET,
    RET_K,
    RSH_K,
    SKF_NET_OFF,
    TAX,
    XOR_X,
    Instruction,
)

_U32 = 0xFFFFFFFF
_NET_BASE = SKF_NET_OFF & _U32
_NET_SPAN = 0x1000  # loads this far above SKF_NET_OFF are network-header reads; the kernel's window is larger


def evaluate_program(instructions: Sequence[Instruction], random_value: int, network_header: bytes = b"") -> int:
    """Return what ``instructions`` return for a SYN with this random number and IP header.

    A load past the end of ``network_header`` ends the program with 0, as the kernel's does (a failed packet
    load returns 0 from the filter).
    """
    if not 0 <= random_value <= _U32:
        raise ValueError(f"random_value {random_value} is not a u32")
    a = x = 0
    pc = 0
    while pc < len(instructions):
        code, jt, jf, k = instructions[pc]
        if code == LD_W_ABS and k == RANDOM_OFFSET:
            a = random_value
        elif code in (LD_W_ABS, LD_B_ABS):
            size = 4 if code == LD_W_ABS else 1
            offset = k - _NET_BASE
            if not 0 <= offset < _NET_SPAN:
                raise ValueError(f"instruction {pc}: load at {k:#x} is neither the random number nor SKF_NET_OFF")
            if offset + size > len(network_header):
                return 0
            a = int.from_bytes(network_header[offset : offset + size], "big")
        elif code == MOD_K:
            if k == 0:
                raise ValueError(f"instruction {pc}: mod by zero (the kernel rejects such a program)")
            a %= k
        elif code == MUL_K:
            a = (a * k) & _U32
        elif code == AND_K:
            a &= k
        elif code == RSH_K:
            a >>= k
        elif code == XOR_X:
            a ^= x
        elif code == TAX:
            x = a
        elif code == JGE_K:
            pc += jt if a >= k else jf
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == JA:
            pc += k
        elif code == RET_K:
            return k
        else:
            raise ValueError(f"instruction {pc}: opcode {code:#x} (k={k:#x}) is not one the builders emit")
        pc += 1
    raise ValueError(f"program ran past its end ({len(instructions)} instructions) without a ret")

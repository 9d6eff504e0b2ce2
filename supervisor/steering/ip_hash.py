"""Sticky steering (``--balance ip-hash``): every connection from one client address goes to the same slot. Pure.

The program hashes the client's source address (IPv4, or all 16 bytes of IPv6; it reads the IP version from the
first nibble of the network header) into one of ``BUCKETS`` buckets, and a search tree compiled from the bucket
table returns the bucket's slot. The supervisor keeps the table; ``rebalance`` changes it as little as possible:

- a slot whose worker is being replaced (reload, crash, a stall) *holds* its buckets: the listening socket is the
  same, so its clients wait in its accept queue and the next worker serves them;
- a slot being removed (scale down), or down (its worker keeps crashing), gives its buckets to the others;
- a slot that becomes ready for the first time (start, scale up) takes an even share, only from slots above it;
- otherwise nothing moves. Adding one slot to N moves about BUCKETS/(N+1) buckets, all to the new slot; removing
  one moves only its own.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

from supervisor.steering.bpf import (
    HASH_FALLBACK,
    JA,
    JEQ_K,
    JGE_K,
    LD_B_ABS,
    LD_W_ABS,
    MOD_K,
    MUL_K,
    RET_K,
    RSH_K,
    SKF_NET_OFF,
    TAX,
    XOR_X,
    Instruction,
)

# 256 buckets: 64 per slot with 4 workers (a slot's share is exact to 1/256), and a tree of at most 8 comparisons.
BUCKETS: Final = 256
UNASSIGNED: Final = -1  # a bucket no slot holds (no slot ready yet): the kernel's hash places it
_U32 = 0xFFFFFFFF
# Multipliers of the finaliser of MurmurHash3 (fmix32): every input bit flips about half the output bits, so
# neighbouring addresses (127.0.0.1, .2, ...) land in unrelated buckets.
_FMIX1, _FMIX2 = 0x85EBCA6B, 0xC2B2AE35
_FOLD = 0x9E3779B1  # folds the four words of an IPv6 address (golden ratio: odd, so the fold loses nothing)


class Role(enum.Enum):
    """What a slot may do with buckets, decided by the supervisor from its worker's state."""

    TAKES = "takes"  # its worker is ready: keeps its buckets, may be given more
    HOLDS = "holds"  # being replaced, restarting, stalled or starting: keeps its buckets, gets no new ones
    OUT = "out"  # being removed, or down (a crash loop): its buckets go to the slots that take


def rebalance(table: Sequence[int], roles: Sequence[Role], buckets: int = BUCKETS) -> list[int]:
    """The bucket table for ``roles`` (one per slot, in slot order), moving as few buckets of ``table`` as possible.

    ``table`` maps bucket → slot (``UNASSIGNED`` for none; empty for a new instance). Buckets of slots that are
    OUT (or gone) are moved, and so are the buckets of a slot that takes above its even share of what the
    holding slots leave (when another slot that takes is below its own); nothing else. If no slot takes,
    buckets that lost their slot stay ``UNASSIGNED``.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    current = list(table) if table else [UNASSIGNED] * buckets
    if len(current) != buckets:
        raise ValueError(f"table has {len(current)} buckets, expected {buckets}")
    held: dict[int, list[int]] = {}
    pool: list[int] = []
    for bucket, slot in enumerate(current):
        if 0 <= slot < len(roles) and roles[slot] is not Role.OUT:
            held.setdefault(slot, []).append(bucket)
        else:
            pool.append(bucket)
    takers = [slot for slot, role in enumerate(roles) if role is Role.TAKES]
    if not takers:
        return [bucket_slot if bucket_slot in held else UNASSIGNED for bucket_slot in current]
    # Slots that hold keep exactly what they have; the slots that take share the rest evenly.
    kept = sum(len(owned) for slot, owned in held.items() if roles[slot] is Role.HOLDS)
    base, extra = divmod(buckets - kept, len(takers))
    # The slots that hold most keep the odd buckets: fewer move.
    by_size = sorted(takers, key=lambda slot: (-len(held.get(slot, [])), slot))
    target = {slot: base + (1 if rank < extra else 0) for rank, slot in enumerate(by_size)}
    for slot, owned in held.items():
        if slot in target and len(owned) > target[slot]:
            pool.extend(owned[target[slot] :])  # its highest buckets go: the rest of the table keeps its shape
            del owned[target[slot] :]
    result = [UNASSIGNED] * buckets
    for slot, owned in held.items():
        for bucket in owned:
            result[bucket] = slot
    counts = {slot: len(held.get(slot, [])) for slot in takers}
    pool.sort()
    given = 0
    for slot in takers:  # each slot's deficit in one piece of the pool: runs stay long, the program short
        need = max(target[slot] - counts[slot], 0)
        for bucket in pool[given : given + need]:
            result[bucket] = slot
        counts[slot] += len(pool[given : given + need])
        given += need
    return result


def moved(before: Sequence[int], after: Sequence[int]) -> int:
    """How many buckets changed slot (a new table counts as none moved)."""
    if not before:
        return 0
    return sum(1 for old, new in zip(before, after, strict=True) if old != new and old != UNASSIGNED)


def _net(offset: int) -> int:
    return (SKF_NET_OFF + offset) & _U32


def _hash_prologue(buckets: int) -> list[Instruction]:
    """Leave the client address's bucket in A: fmix32 of the IPv4 address, or of the IPv6 address's folded words."""
    fold_v6: list[Instruction] = [(LD_W_ABS, 0, 0, _net(8))]
    for offset in (12, 16, 20):  # IPv6 source address: bytes 8..23 of the header
        fold_v6 += [(MUL_K, 0, 0, _FOLD), (TAX, 0, 0, 0), (LD_W_ABS, 0, 0, _net(offset)), (XOR_X, 0, 0, 0)]
    head: list[Instruction] = [
        (LD_B_ABS, 0, 0, _net(0)),  # version (high nibble) and IHL of IPv4; version and class of IPv6
        (RSH_K, 0, 0, 4),
        (JEQ_K, 0, 2, 4),  # IPv4: the next instruction; otherwise two on
        (LD_W_ABS, 0, 0, _net(12)),  # IPv4 source address
        (JA, 0, 0, len(fold_v6) + 2),  # over the IPv6 part, to the mix
        (JEQ_K, 1, 0, 6),
        (RET_K, 0, 0, HASH_FALLBACK),  # neither: never for TCP, but the kernel's hash is the safe answer
    ]
    mix: list[Instruction] = []
    for shift, multiplier in ((16, _FMIX1), (13, _FMIX2), (16, None)):
        mix += [(TAX, 0, 0, 0), (RSH_K, 0, 0, shift), (XOR_X, 0, 0, 0)]  # A ^= A >> shift
        if multiplier is not None:
            mix.append((MUL_K, 0, 0, multiplier))
    return head + fold_v6 + mix + [(MOD_K, 0, 0, buckets)]


def _runs(table: Sequence[int]) -> list[tuple[int, int]]:
    """(first bucket, value returned) for each run of equal slots; unassigned buckets return HASH_FALLBACK."""
    runs: list[tuple[int, int]] = []
    for bucket, slot in enumerate(table):
        value = HASH_FALLBACK if slot == UNASSIGNED else slot
        if not runs or runs[-1][1] != value:
            runs.append((bucket, value))
    return runs


def _search(runs: Sequence[tuple[int, int]]) -> list[Instruction]:
    """A binary search over the runs' first buckets, leaves ``ret #slot``. Conditional jumps reach at most 255
    instructions ahead, so a left subtree longer than that is jumped over with ``ja`` (32-bit offset)."""
    if len(runs) == 1:
        return [(RET_K, 0, 0, runs[0][1])]
    middle = len(runs) // 2
    left, right = _search(runs[:middle]), _search(runs[middle:])
    pivot = runs[middle][0]
    if len(left) <= 0xFF:
        return [(JGE_K, len(left), 0, pivot), *left, *right]
    return [(JGE_K, 0, 1, pivot), (JA, 0, 0, len(left)), *left, *right]


def build_ip_hash_program(table: Sequence[int]) -> list[Instruction]:
    """The program that sends each client address to the slot of its bucket in ``table``."""
    if not table:
        raise ValueError("the bucket table is empty")
    if all(slot == UNASSIGNED for slot in table):
        return [(RET_K, 0, 0, HASH_FALLBACK)]
    for bucket, slot in enumerate(table):
        if not (slot == UNASSIGNED or 0 <= slot < HASH_FALLBACK):
            raise ValueError(f"bucket {bucket} maps to slot {slot}")
    return _hash_prologue(len(table)) + _search(_runs(table))


def shares(table: Sequence[int], slots: int) -> list[int]:
    """Buckets per slot (for ``wsup status``)."""
    counts = [0] * slots
    for slot in table:
        if 0 <= slot < slots:
            counts[slot] += 1
    return counts

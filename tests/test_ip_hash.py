"""ip-hash steering: the bucket table's remapping, the program the interpreter and a real reuseport group run."""

from __future__ import annotations

import contextlib
import random
import select
import socket
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from supervisor.steering.bpf import HASH_FALLBACK, JA, JGE_K, RET_K, attach_program, pack_program
from supervisor.steering.bpf_eval import evaluate_program
from supervisor.steering.controller import Steering
from supervisor.steering.ip_hash import (
    BUCKETS,
    UNASSIGNED,
    Role,
    build_ip_hash_program,
    moved,
    rebalance,
    shares,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="steering is Linux-only")
T, H, X = Role.TAKES, Role.HOLDS, Role.OUT  # X: out


def ipv4_header(source: str) -> bytes:
    return (
        bytes([0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0]) + socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    )


def ipv6_header(source: str) -> bytes:
    pton = socket.inet_pton
    return bytes([0x60, 0, 0, 0, 0, 20, 6, 64]) + pton(socket.AF_INET6, source) + pton(socket.AF_INET6, "::1")


def slot_of(program: list[tuple[int, int, int, int]], header: bytes) -> int:
    # The random number must not matter: the choice is the address's, not a draw.
    picks = {evaluate_program(program, value, header) for value in (0, 1, 0xFFFFFFFF)}
    assert len(picks) == 1
    return picks.pop()


# --- the bucket table -----------------------------------------------------------------------------------------
def test_a_new_table_is_even_and_in_contiguous_runs() -> None:
    table = rebalance([], [T] * 4)
    assert shares(table, 4) == [64, 64, 64, 64]
    assert table == sorted(table)  # four runs: the program's search tree has four leaves
    assert shares(rebalance([], [T] * 3), 3) == [86, 85, 85]


def test_a_replaced_or_stalled_worker_keeps_its_addresses() -> None:
    table = rebalance([], [T] * 4)
    for roles in ([T, H, T, T], [H, H, H, H], [T, T, T, H]):
        assert rebalance(table, roles) == table


def test_adding_a_slot_moves_only_its_share_and_only_to_it() -> None:
    before = rebalance([], [T] * 4)
    after = rebalance(before, [T] * 5)
    assert shares(after, 5) == [52, 51, 51, 51, 51]
    changed = [bucket for bucket in range(BUCKETS) if before[bucket] != after[bucket]]
    assert len(changed) == moved(before, after) == 51
    assert {after[bucket] for bucket in changed} == {4}


def test_removing_a_slot_moves_only_its_addresses() -> None:
    before = rebalance([], [T] * 5)
    after = rebalance(before, [T, T, T, T, X])
    changed = [bucket for bucket in range(BUCKETS) if before[bucket] != after[bucket]]
    assert {before[bucket] for bucket in changed} == {4}
    assert len(changed) == shares(before, 5)[4]
    assert shares(after, 5) == [64, 64, 64, 64, 0]


def test_a_starting_slot_gets_nothing_until_ready() -> None:
    before = rebalance([], [T] * 4)
    assert rebalance(before, [T, T, T, T, H]) == before  # scale-up: the new slot's worker is starting
    assert rebalance([], [H] * 4) == [UNASSIGNED] * BUCKETS  # nothing ready yet: the kernel's hash


def test_a_down_slot_lends_its_addresses_and_gets_a_share_back() -> None:
    table = rebalance([], [T] * 4)
    down = rebalance(table, [T, X, T, T])
    assert 1 not in down
    assert moved(table, down) == 64  # only the down slot's buckets
    back = rebalance(down, [T] * 4)
    assert shares(back, 4) == [64, 64, 64, 64]
    assert moved(down, back) == 64


def test_startup_in_any_order_ends_even() -> None:
    rng = random.Random(7)
    for _ in range(20):
        order = list(range(6))
        rng.shuffle(order)
        table: list[int] = []
        roles = [H] * 6
        for slot in order:
            roles[slot] = T
            table = rebalance(table, roles)
        assert sorted(shares(table, 6)) == [42, 42, 43, 43, 43, 43]


def test_a_holding_slot_never_grows() -> None:
    table = rebalance([], [T, T])
    grown = rebalance(table, [T, H, T])  # slot 1 holds 128; slot 2 takes only from slot 0's excess
    assert shares(grown, 3)[1] == 128
    assert shares(grown, 3) == [64, 128, 64]


def test_rebalance_rejects_a_table_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="expected 256"):
        rebalance([0] * 10, [T])


# --- the program ------------------------------------------------------------------------------------------------
def test_the_program_follows_the_table_for_ipv4_and_ipv6() -> None:
    table = rebalance(rebalance([], [T] * 4), [T] * 7)  # fragmented runs
    program = build_ip_hash_program(table)
    seen: Counter[int] = Counter()
    for index in range(2000):
        v4 = f"10.{index // 256}.{index % 256}.7"
        v6 = f"2001:db8::{index:x}:1"
        for header in (ipv4_header(v4), ipv6_header(v6)):
            slot = slot_of(program, header)
            seen[slot] += 1
    assert set(seen) == set(range(7))
    assert max(seen.values()) / min(seen.values()) < 1.3  # a hash of 4,000 addresses over 7 even shares


def test_neighbouring_addresses_spread() -> None:
    program = build_ip_hash_program(rebalance([], [T] * 4))
    slots = Counter(slot_of(program, ipv4_header(f"127.0.0.{host}")) for host in range(1, 201))
    assert set(slots) == {0, 1, 2, 3}


def test_a_packet_that_is_not_ip_gets_the_kernel_hash() -> None:
    program = build_ip_hash_program(rebalance([], [T] * 2))
    assert slot_of(program, bytes([0x20]) + bytes(39)) == HASH_FALLBACK


def test_unassigned_buckets_return_the_hash_fallback() -> None:
    assert build_ip_hash_program([UNASSIGNED] * BUCKETS) == [(RET_K, 0, 0, HASH_FALLBACK)]
    half = [0] * 128 + [UNASSIGNED] * 128
    program = build_ip_hash_program(half)
    returned = {slot_of(program, ipv4_header(f"10.0.{i // 256}.{i % 256}")) for i in range(500)}
    assert returned == {0, HASH_FALLBACK}


def test_a_table_of_one_run_per_bucket_uses_long_jumps_and_stays_correct() -> None:
    # 256 buckets never need more than a u8 jump (a left subtree of 128 leaves is 255 instructions); 1,024 do.
    size = 1024
    table = [bucket % 3 for bucket in range(size)]  # the worst case: one run per bucket
    program = build_ip_hash_program(table)
    assert any(code == JA for code, *_ in program[10:])  # subtrees longer than a u8 jump are reached with ja
    pack_program(program)  # every field fits struct sock_filter
    comparisons = [k for code, _, _, k in program if code == JGE_K]
    assert len(comparisons) == size - 1  # a binary search: at most 10 of them run for one SYN
    identity = build_ip_hash_program(list(range(size)))  # returns the bucket itself
    for index in range(300):
        header = ipv4_header(f"192.168.{index // 256}.{index % 256}")
        assert slot_of(program, header) == table[slot_of(identity, header)]


def _bucket(header: bytes) -> int:
    # The bucket of an address, from the program itself: a table that maps bucket b to slot b.
    return slot_of(build_ip_hash_program(list(range(BUCKETS))), header)


# --- the kernel -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def reuseport_group(count: int, family: socket.AddressFamily, host: str) -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        port = 0
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(64)
            port = sock.getsockname()[1]
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def accepted_by(group: list[socket.socket], family: socket.AddressFamily, source: str) -> int:
    """Connect from ``source`` and return the index of the listener that got the connection."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.bind((source, 0))
        client.connect(group[0].getsockname()[:2])
        readable, _, _ = select.select(group, [], [], 5.0)
        assert readable, "no listener got the connection"
        conn, _ = readable[0].accept()
        conn.close()
        return group.index(readable[0])


@linux_only
def test_a_real_group_sends_each_ipv4_address_to_its_slot_every_time() -> None:
    table = rebalance(rebalance([], [T] * 4), [T, T, X, T])  # slot 2 removed: its buckets lent to the others
    program = build_ip_hash_program(table)
    with reuseport_group(4, socket.AF_INET, "127.0.0.1") as group:
        attach_program(group[0], program)
        placed: dict[str, set[int]] = {}
        for host in range(1, 41):
            source = f"127.0.0.{host}"
            for _ in range(3):
                placed.setdefault(source, set()).add(accepted_by(group, socket.AF_INET, source))
        for source, slots in placed.items():
            assert slots == {slot_of(program, ipv4_header(source))}, source
        assert {slot for slots in placed.values() for slot in slots} == {0, 1, 3}


@linux_only
def test_a_real_group_reads_the_ipv6_source_address() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    # Put ::1's bucket on each slot in turn: the kernel must follow the IPv6 address, not a random draw.
    bucket = _bucket(ipv6_header("::1"))
    with reuseport_group(3, socket.AF_INET6, "::1") as group:
        for slot in range(3):
            table = [(slot + 1) % 3] * BUCKETS
            table[bucket] = slot
            attach_program(group[0], build_ip_hash_program(table))
            assert {accepted_by(group, socket.AF_INET6, "::1") for _ in range(4)} == {slot}


@linux_only
def test_steering_rebuilds_the_program_only_when_a_role_changes() -> None:
    steering = Steering("ip-hash")
    with reuseport_group(3, socket.AF_INET, "127.0.0.1") as group:
        steering.update_sticky(group, [T, T, T])
        assert steering.attaches == 1
        first = list(steering.table)
        steering.update_sticky(group, [T, T, T])
        steering.update_sticky(group, [T, H, T])  # a reload of slot 1: same table, no attach
        assert steering.attaches == 1 and steering.table == first
        steering.update_sticky(group, [T, T, X])
        assert steering.attaches == 2 and 2 not in steering.table
        described = steering.describe()
        assert described["mode"] == "ip-hash"
        assert described["buckets"] == described["weights"] == shares(steering.table, 3)
        assert described["moved_buckets"] == shares(first, 3)[2]

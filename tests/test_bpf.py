"""The steering program: its shape, the slot it picks for a random number, a real reuseport group, and Steering."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
from collections.abc import Iterator, Sequence

import pytest

from ipc.errors import WsupError
from supervisor.process.listeners import ListenerGroup, resolve
from supervisor.steering.balancing import SlotLoad
from supervisor.steering.bpf import (
    BPF_MAXINSNS,
    HASH_FALLBACK,
    JGE_K,
    LD_RANDOM,
    MOD_K,
    RANDOM_OFFSET,
    RET_K,
    SteeringUnavailableError,
    attach_program,
    build_weighted_program,
    detach_program,
    pack_program,
)
from supervisor.steering.bpf_eval import evaluate_program
from supervisor.steering.controller import Steering
from supervisor.steering.load_tracker import LoadTracker, Plan
from supervisor.steering.tcp_info import accept_queue, queued_in

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="steering is Linux-only")


def test_random_offset_is_skf_ad_random() -> None:
    assert RANDOM_OFFSET == 0xFFFFF038  # SKF_AD_OFF + SKF_AD_RANDOM = -0x1000 + 56, as a u32


def test_program_shape() -> None:
    assert build_weighted_program([1, 2, 3]) == [
        (LD_RANDOM, 0, 0, RANDOM_OFFSET),
        (MOD_K, 0, 0, 6),
        (JGE_K, 1, 0, 1),
        (RET_K, 0, 0, 0),
        (JGE_K, 1, 0, 3),
        (RET_K, 0, 0, 1),
        (RET_K, 0, 0, 2),
    ]


def test_zero_weights_are_never_returned() -> None:
    program = build_weighted_program([0, 5, 0, 5, 0])
    returned = {k for code, _, _, k in program if code == RET_K}
    assert returned == {1, 3}
    assert {evaluate_program(program, value) for value in range(100)} == {1, 3}


def test_single_eligible_slot() -> None:
    program = build_weighted_program([0, 0, 7])
    assert program == [(LD_RANDOM, 0, 0, RANDOM_OFFSET), (MOD_K, 0, 0, 7), (RET_K, 0, 0, 2)]
    assert {evaluate_program(program, value) for value in (0, 6, 7, 2**32 - 1)} == {2}


@pytest.mark.parametrize("weights", [[0, 0, 0, 0], []])
def test_nothing_eligible_falls_back_to_the_kernel_hash(weights: list[int]) -> None:
    program = build_weighted_program(weights)
    assert program == [(RET_K, 0, 0, HASH_FALLBACK)]
    assert evaluate_program(program, 12345) == 0xFFFFFFFF


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight of slot 1 is -1"):
        build_weighted_program([3, -1, 2])


def test_total_above_2_31_is_rejected() -> None:
    build_weighted_program([2**30, 2**30])  # exactly 2**31 is allowed
    with pytest.raises(ValueError, match=r"at most 2\*\*31"):
        build_weighted_program([2**30, 2**30, 1])


def test_program_length_limit() -> None:
    fits = build_weighted_program([1] * ((BPF_MAXINSNS - 1) // 2))
    assert len(fits) <= BPF_MAXINSNS
    with pytest.raises(ValueError, match=r"\(max 4096\)"):
        build_weighted_program([1] * ((BPF_MAXINSNS + 1) // 2))


def test_jumps_fit_a_u8_for_many_slots() -> None:
    program = build_weighted_program(list(range(1, 121)))
    assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in program)
    assert len(program) == 2 * 120 + 1


def test_boundaries_select_the_right_slot() -> None:
    program = build_weighted_program([2, 0, 3, 5])  # slot 0: [0, 2), slot 2: [2, 5), slot 3: [5, 10)
    expected = {0: 0, 1: 0, 2: 2, 4: 2, 5: 3, 9: 3, 10: 0, 15: 3}
    assert {value: evaluate_program(program, value) for value in expected} == expected


def test_choice_is_proportional_to_weights() -> None:
    weights = [1, 0, 2, 3, 4, 0, 7]
    program = build_weighted_program(weights)
    total, rounds = sum(weights), 50
    counts = [0] * len(weights)
    for value in range(total * rounds):
        counts[evaluate_program(program, value)] += 1
    assert counts == [weight * rounds for weight in weights]


def test_choice_over_the_top_of_the_u32_range() -> None:
    # `random % total` over 2**32 - total .. 2**32 - 1: a full cycle of residues, in the kernel's arithmetic.
    weights = [3, 1]
    program = build_weighted_program(weights)
    start = 2**32 - 4 * 100
    counts = [0, 0]
    for value in range(start, 2**32):
        counts[evaluate_program(program, value)] += 1
    assert counts == [300, 100]


def test_evaluate_rejects_what_the_builder_never_emits() -> None:
    with pytest.raises(ValueError, match="not a u32"):
        evaluate_program(build_weighted_program([1]), 2**32)
    with pytest.raises(ValueError, match="opcode 0x34"):
        evaluate_program([(0x34, 0, 0, 1)], 0)  # A /= k: no builder emits it
    with pytest.raises(ValueError, match="without a ret"):
        evaluate_program([(LD_RANDOM, 0, 0, RANDOM_OFFSET)], 0)


def test_pack_program_is_a_sock_filter_array() -> None:
    program = build_weighted_program([1, 2, 3, 4])
    packed = pack_program(program)
    assert len(packed) == 8 * len(program)
    assert list(struct.iter_unpack("@HBBI", packed)) == program


def test_pack_program_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="instruction 1"):
        pack_program([(RET_K, 0, 0, 0), (JGE_K, 256, 0, 1)])


def test_steering_unavailable_is_a_wsup_error() -> None:
    assert issubclass(SteeringUnavailableError, WsupError)


@contextlib.contextmanager
def reuseport_group(size: int) -> Iterator[list[socket.socket]]:
    """Listening sockets on one 127.0.0.1 port, in group order (the order of listen())."""
    with contextlib.ExitStack() as stack:
        group: list[socket.socket] = []
        for _ in range(size):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", group[0].getsockname()[1] if group else 0))
            sock.listen(128)
            sock.setblocking(False)
            group.append(sock)
        yield group


def connect_and_count(group: list[socket.socket], clients: int) -> list[int]:
    """Connect `clients` times, then accept all and return how many connections waited on each listener."""
    with contextlib.ExitStack() as stack:
        for _ in range(clients):
            stack.enter_context(socket.create_connection(group[0].getsockname(), timeout=5))
        counts = []
        for listener in group:
            accepted = 0
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted += 1
            counts.append(accepted)
        return counts


@linux_only
def test_real_group_follows_the_program() -> None:
    with reuseport_group(4) as group:
        attach_program(group[0], build_weighted_program([0, 0, 1, 0]))
        assert connect_and_count(group, 50) == [0, 0, 50, 0]
        # Any member can replace the program; the next SYN uses the new one.
        attach_program(group[3], build_weighted_program([1, 1, 0, 0]))
        counts = connect_and_count(group, 50)
        assert sum(counts) == 50 and counts[2:] == [0, 0]
        detach_program(group[1])
        detach_program(group[1])  # nothing attached any more: a no-op
        assert sum(connect_and_count(group, 20)) == 20


@linux_only
def test_all_zero_weights_fall_back_to_the_hash_on_a_real_group() -> None:
    with reuseport_group(2) as group:
        attach_program(group[0], build_weighted_program([0, 0]))
        assert sum(connect_and_count(group, 20)) == 20


@linux_only
def test_attach_needs_a_listening_reuseport_socket() -> None:
    with socket.socket() as idle:
        with pytest.raises(ValueError, match="already listening"):
            attach_program(idle, build_weighted_program([1]))
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(SteeringUnavailableError, match="EINVAL") as caught:
            attach_program(plain, build_weighted_program([1]))
        assert caught.value.errno == errno.EINVAL


@linux_only
def test_accept_queue_counts_unaccepted_connections() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        assert accept_queue(listener) == (0, 8)
        with contextlib.ExitStack() as stack:
            for _ in range(3):
                stack.enter_context(socket.create_connection(listener.getsockname(), timeout=5))
            assert accept_queue(listener) == (3, 8)
            conn, _ = listener.accept()
            with conn:
                assert accept_queue(listener) == (2, 8)
                with pytest.raises(ValueError, match="not listening"):
                    accept_queue(conn)


# --- Steering: the program kept current on a real group ----------------------------------------------------------
def loads_of(counts: list[int], ineligible: tuple[int, ...] = ()) -> list[SlotLoad]:
    return [SlotLoad(slot, slot not in ineligible, count, 0, 0) for slot, count in enumerate(counts)]


@linux_only
def test_steering_attaches_only_when_the_weights_change() -> None:
    with reuseport_group(4) as group:
        steering = Steering("least-conn", min_interval=0.0)
        steering.update(group, loads_of([0, 0, 0, 0]))
        assert steering.attaches == 1 and steering.weights == [2500] * 4
        steering.update(group, loads_of([0, 0, 0, 0]))
        assert steering.attaches == 1  # same weights: the program in place is kept
        steering.update(group, loads_of([0, 0, 0, 0], ineligible=(2,)))
        assert steering.attaches == 2 and steering.weights[2] == 0
        assert connect_and_count(group, 30)[2] == 0
        described = steering.describe()
        assert described["mode"] == "least-conn" and described["updates"] == 2
        assert described["mean_attach_us"] > 0 and described["stalled"] == []


@linux_only
def test_steering_leaves_out_a_slot_at_once_between_intervals() -> None:
    with reuseport_group(3) as group:
        steering = Steering("least-conn", min_interval=3600.0)
        steering.update(group, loads_of([5, 5, 5]), force=True)
        steering.update(group, loads_of([50, 5, 5]))
        assert steering.attaches == 1  # a change of load waits for the interval...
        steering.update(group, loads_of([5, 5, 5], ineligible=(0,)))
        assert steering.attaches == 2 and steering.weights[0] == 0  # ...one of eligibility does not


@linux_only
def test_steering_falls_back_to_the_hash_when_the_kernel_refuses() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()  # no SO_REUSEPORT: no group to attach to
        steering = Steering("least-conn")
        steering.update([plain], loads_of([0]))
        assert steering.mode == "hash" and steering.reason and "EINVAL" in steering.reason
        assert steering.describe()["weights"] == []


def test_hash_mode_never_attaches() -> None:
    steering = Steering("hash")
    steering.update([], loads_of([0, 0]))
    assert steering.attaches == 0 and steering.describe()["mode"] == "hash"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")
def test_queued_in_reads_a_listeners_queue_and_answers_0_where_there_is_none() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    client = socket.create_connection(listener.getsockname())
    try:
        assert queued_in([listener], 0) == 1  # connected, not yet accepted
        assert queued_in([listener], 1) == 0  # a slot whose socket is gone
        assert queued_in([client], 0) == 0  # not a listener: TCP_INFO means something else there
        listener.close()
        assert queued_in([listener], 0) == 0  # closed
    finally:
        client.close()
        listener.close()


class _FixedPlan(LoadTracker):
    """A tracker whose plan is the test's: what the program makes of a shared share, on a real group."""

    def __init__(self, weights: list[int], shared_share: float) -> None:
        super().__init__()
        self.fixed = Plan(weights, [0.0] * len(weights), [], 4.0, 0.0, 0.0, False, False, shared_share)

    def plan(self, now: float, loads: Sequence[SlotLoad], *, returning: float | None = None) -> Plan:
        return self.fixed


@linux_only
def test_the_shared_queue_is_group_index_0_and_takes_its_share() -> None:
    group = ListenerGroup.open(resolve("127.0.0.1", 0), 2, shared_queue=True)
    try:
        assert group.shared is not None and group.shared_fileno == group.shared.fileno()
        members = [group.shared, *group.sockets]  # group order: the shared socket listened first
        for sock in members:
            sock.setblocking(False)
        steering = Steering("least-conn", min_interval=0.0)
        steering.shared_queue = True
        steering.tracker = _FixedPlan([5000, 5000], 1.0)  # a stream: all of it to the shared queue
        steering.update(group.sockets, loads_of([0, 0]))
        assert steering.describe()["shared_queue"] == 1.0 and steering.weights == [0, 0]
        assert connect_and_count(members, 20) == [20, 0, 0]
        steering.tracker = _FixedPlan([0, 10000], 0.0)  # placed one by one: slot 1 is group index 2
        steering.update(group.sockets, loads_of([0, 0]))
        assert steering.describe()["shared_queue"] == 0.0
        assert connect_and_count(members, 20) == [0, 0, 20]
        steering.tracker = _FixedPlan([10000, 0], 0.5)  # half shared, half steered
        steering.update(group.sockets, loads_of([0, 0]))
        shared_count, slot0, slot1 = connect_and_count(members, 200)
        assert slot1 == 0 and 50 < shared_count < 150 and shared_count + slot0 == 200
    finally:
        group.close()
    assert group.shared is None and group.shared_fileno == -1

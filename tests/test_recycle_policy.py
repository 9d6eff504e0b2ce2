"""The recycling policy, pure: per-worker limits with jitter, which limit a worker is past, which worker goes first."""

from __future__ import annotations

import random

from supervisor.process.recycle_policy import (
    MAX_LIFETIME,
    MAX_MEMORY,
    MAX_REQUESTS,
    Limits,
    Sample,
    WorkerLimits,
    born_over,
    choose,
    overdue,
    retry_delay,
)

MIB = 1 << 20


def _sample(slot: int = 0, *, age: float = 0.0, requests: int = 0, memory: int = 0) -> Sample:
    return Sample(slot=slot, pid=1000 + slot, age=age, requests=requests, memory=memory)


def test_each_worker_draws_its_own_jitter_within_the_range() -> None:
    limits = Limits(max_requests=1000, max_requests_jitter=50, max_lifetime=60.0, max_lifetime_jitter=10.0)
    rng = random.Random(7)
    drawn = [limits.for_worker(rng) for _ in range(200)]
    assert all(1000 <= (w.requests or 0) <= 1050 for w in drawn)
    assert all(60.0 <= (w.lifetime or 0) <= 70.0 for w in drawn)
    assert len({w.requests for w in drawn}) > 10  # spread, so workers started together do not recycle together
    assert all(w.memory is None for w in drawn)


def test_limits_that_are_off_are_none_and_without_jitter_exact() -> None:
    assert Limits().for_worker(random.Random(1)) == WorkerLimits(None, None, None)
    assert not Limits().enabled
    exact = Limits(max_requests=10, max_memory=512 * MIB).for_worker(random.Random(1))
    assert exact == WorkerLimits(10, None, 512 * MIB)


def test_overdue_names_the_limit_reached() -> None:
    limits = WorkerLimits(requests=100, lifetime=60.0, memory=100 * MIB)
    assert overdue(_sample(requests=99, age=59.9, memory=99 * MIB), limits) is None
    due = overdue(_sample(requests=100), limits)
    assert due is not None and due.reason == MAX_REQUESTS
    due = overdue(_sample(age=61.0), limits)
    assert due is not None and due.reason == MAX_LIFETIME
    due = overdue(_sample(memory=100 * MIB), limits)
    assert due is not None and due.reason == MAX_MEMORY


def test_the_limit_furthest_past_wins_and_memory_wins_a_tie() -> None:
    limits = WorkerLimits(requests=100, lifetime=60.0, memory=100 * MIB)
    due = overdue(_sample(requests=300, age=61.0, memory=101 * MIB), limits)
    assert due is not None and (due.reason, due.overshoot) == (MAX_REQUESTS, 3.0)
    due = overdue(_sample(requests=200, memory=200 * MIB), limits)
    assert due is not None and due.reason == MAX_MEMORY


def test_choose_takes_the_worker_furthest_past_its_limit_and_skips_held_ones() -> None:
    limits = WorkerLimits(requests=100, lifetime=None, memory=None)
    samples = [_sample(0, requests=120), _sample(1, requests=90), _sample(2, requests=150)]
    candidates = [(sample, limits) for sample in samples]
    due = choose(candidates, held=set())
    assert due is not None and due.slot == 2
    due = choose(candidates, held={1002})
    assert due is not None and due.slot == 0
    assert choose(candidates, held={1000, 1002}) is None
    assert choose([], held=set()) is None


def test_a_worker_over_its_memory_limit_at_start_is_recognised() -> None:
    limits = WorkerLimits(requests=None, lifetime=None, memory=100 * MIB)
    assert born_over(100 * MIB, limits)
    assert not born_over(60 * MIB, limits)
    assert not born_over(10_000 * MIB, WorkerLimits(None, None, None))


def test_retries_of_a_failed_recycle_back_off_up_to_a_cap() -> None:
    delays = [retry_delay(n) for n in range(8)]
    assert delays[0] == 0.0
    assert delays[1:4] == [5.0, 10.0, 20.0]
    assert delays[-1] == 300.0 and delays == sorted(delays)

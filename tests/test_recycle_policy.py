"""The recycling policy, pure: per-worker limits with jitter, which limit a worker is past, which worker goes first,
and the --max-memory forecast (growth rates from synthetic RSS samples, the line, early recycles)."""

from __future__ import annotations

import dataclasses
import random

from supervisor.process.recycle_policy import (
    DEFAULT_RECYCLE_S,
    MAX_LIFETIME,
    MAX_MEMORY,
    MAX_REQUESTS,
    WARMUP_S,
    Growth,
    Limits,
    Pace,
    RecycleDuration,
    Sample,
    WorkerLimits,
    born_over,
    choose,
    memory_line,
    overdue,
    plan,
    retry_delay,
    sustained_rate,
)

MIB = 1 << 20


def _sample(
    slot: int = 0, *, age: float = 0.0, requests: int = 0, memory: int = 0, growth: float | None = None
) -> Sample:
    return Sample(slot, 1000 + slot, age, requests, memory, growth, first_memory=50 * MIB if memory else 0)


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


# --- the --max-memory forecast --------------------------------------------------------------------------------
LIMIT = WorkerLimits(requests=None, lifetime=None, memory=150 * MIB)


def _series(rss: list[float], start: float = WARMUP_S) -> list[tuple[float, int]]:
    """Samples once a second (seconds since ready, bytes) of RSS values given in MiB."""
    return [(start + i, int(value * MIB)) for i, value in enumerate(rss)]


def _noisy(rng: random.Random, base: float, slope: float, n: int, noise: float) -> list[float]:
    return [base + slope * i + rng.uniform(-noise, noise) for i in range(n)]


def test_a_steady_leak_gives_its_rate_despite_noise() -> None:
    rng = random.Random(5)
    for _ in range(50):
        rate = sustained_rate(_series(_noisy(rng, 80, 7.0, 8, 1.0)))
        assert rate is not None and 6.0 * MIB < rate < 8.0 * MIB
    exact = sustained_rate(_series([60 + 0.5 * i for i in range(6)]))
    assert exact is not None and abs(exact - 0.5 * MIB) < 1


def test_noise_a_single_jump_or_too_few_samples_are_not_a_leak() -> None:
    rng = random.Random(11)
    flat = [sustained_rate(_series(_noisy(rng, 135, 0.0, 8, 2.0))) for _ in range(200)]
    assert sum(rate is not None for rate in flat) <= 4  # noise shows no trend (almost never)
    assert sustained_rate(_series([100, 100, 100, 100, 140, 140, 140, 140])) is None  # a cache loaded once
    assert sustained_rate(_series([100, 100, 120, 120, 120, 140, 140, 140])) is None  # two jumps
    assert sustained_rate(_series([100, 99, 98, 97, 96, 95])) is None  # shrinking
    assert sustained_rate(_series([100, 107, 114, 121])) is None  # too few samples to call it sustained
    assert (
        sustained_rate([(3.0, 100 * MIB), (3.5, 101 * MIB), (4.0, 102 * MIB), (4.5, 103 * MIB), (5.0, 104 * MIB)])
        is None
    )


def test_growth_ignores_the_warm_up_and_keeps_a_recent_window() -> None:
    growth = Growth()
    for second in range(int(WARMUP_S)):  # a fresh worker's first seconds: imports and buffers, fast
        growth.add(float(second), (40 + 30 * second) * MIB)
    assert growth.rate() is None
    for second in range(int(WARMUP_S), 30):  # then flat for a long time...
        growth.add(float(second), 130 * MIB)
    growth.add(29.0, 149 * MIB)  # (a repeated look at the same time adds nothing)
    assert growth.rate() is None
    for second in range(30, 40):  # ...then a leak: only the recent window counts
        growth.add(float(second), (130 + 2 * (second - 29)) * MIB)
    rate = growth.rate()
    assert rate is not None and abs(rate - 2 * MIB) < 0.01 * MIB


def test_the_recycle_duration_starts_from_a_default_and_follows_the_measured_ones() -> None:
    duration = RecycleDuration()
    assert duration.budget == duration.seconds == DEFAULT_RECYCLE_S and duration.measured == 0
    duration.observe(2.0)
    assert (duration.seconds, duration.budget) == (2.0, 3.0)  # the first measurement replaces the guess
    for _ in range(30):
        duration.observe(2.0)
    assert duration.seconds == 2.0 and duration.budget < 2.01  # steady: planned with little more than the average
    duration.observe(6.0)
    assert 2.0 < duration.seconds < duration.budget - 2.0  # after one slow recycle the plan allows for another
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        duration.observe(bad)
    assert duration.measured == 32


def test_a_turn_ends_after_the_recycles_ahead_of_it_and_those_running() -> None:
    assert [Pace(recycle_s=4.0).turn_ends(k) for k in (1, 2, 3)] == [4.0, 8.0, 12.0]
    assert [Pace(recycle_s=4.0, concurrency=2).turn_ends(k) for k in (1, 2, 3)] == [4.0, 4.0, 8.0]
    assert Pace(recycle_s=4.0, concurrency=2, in_flight=1).turn_ends(2) == 8.0


def test_a_growing_worker_is_recycled_before_it_reaches_the_limit_when_its_turn_would_end_after() -> None:
    pace = Pace(recycle_s=5.0, interval=1.0)
    # 2 MiB/s, 20 MiB below the limit: crossing in 10 s; its turn (first in line) ends in 5 + 1 s: not yet.
    assert plan([(_sample(0, memory=130 * MIB, growth=2 * MIB), LIMIT)], pace=pace) == []
    # 11 MiB below: crossing in 5.5 s, before its turn would end: due now, by forecast, under the limit.
    due = plan([(_sample(0, memory=139 * MIB, growth=2 * MIB), LIMIT)], pace=pace)
    assert len(due) == 1 and due[0].reason == MAX_MEMORY and due[0].overshoot < 1
    assert "forecast to reach --max-memory 150 MiB in 5.5s" in due[0].note and "2.0 MiB/s" in due[0].note


def test_workers_growing_together_line_up_soonest_crossing_first_and_the_line_starts_early() -> None:
    pace = Pace(recycle_s=5.0, interval=1.0)
    # Four workers growing 1 MiB/s, crossing in 15..18 s. Alone, each would be first in line and due at <= 6 s;
    # but the 4th's turn ends in 4 x 5 + 1 = 21 s >= 18 s, so the line has to start now, soonest crossing first.
    workers = [(_sample(slot, memory=(135 - slot) * MIB, growth=1 * MIB), LIMIT) for slot in (2, 0, 3, 1)]
    assert [d.slot for d in plan(workers, pace=pace)] == [0, 1, 2, 3]
    # With two at once the 4th's turn ends in 2 x 5 + 1 = 11 s < 18 s: nobody is due yet.
    assert plan(workers, pace=Pace(recycle_s=5.0, interval=1.0, concurrency=2)) == []


def test_a_flat_worker_near_the_limit_is_not_recycled_and_a_slow_one_waits() -> None:
    pace = Pace(recycle_s=5.0, interval=1.0)
    flat = _sample(0, memory=int(0.9 * 150 * MIB))  # 90% of the limit, no sustained growth
    slow = _sample(1, memory=100 * MIB, growth=0.1 * MIB)  # 500 s from its limit
    assert plan([(flat, LIMIT), (slow, LIMIT)], pace=pace) == []
    assert memory_line([(flat, LIMIT), (slow, LIMIT)], pace) == ([], [])


def test_workers_past_the_memory_limit_go_first_then_forecasts_then_other_limits() -> None:
    limits = WorkerLimits(requests=100, lifetime=None, memory=150 * MIB)
    workers = [
        (_sample(0, requests=500, memory=50 * MIB), limits),  # 5x past --max-requests
        (_sample(1, memory=140 * MIB, growth=5 * MIB), limits),  # crossing in 2 s
        (_sample(2, memory=160 * MIB), limits),  # past it, flat
        (_sample(3, memory=200 * MIB, requests=300), limits),  # furthest past: once, for memory
        (_sample(4, memory=int(0.9 * 150 * MIB)), limits),
    ]
    due = plan(workers, pace=Pace())
    assert [(d.slot, d.reason) for d in due] == [(3, MAX_MEMORY), (2, MAX_MEMORY), (1, MAX_MEMORY), (0, MAX_REQUESTS)]
    assert [d.slot for d in plan(workers, held={1003}, pace=Pace())] == [2, 1, 0]
    chosen = choose(workers, held=set())
    assert chosen is not None and chosen.slot == 3


def test_a_line_too_slow_for_the_growth_is_reported_and_concurrency_helps() -> None:
    # Four workers 10 MiB below the limit growing 5 MiB/s: 2 s each, 5 s per recycle one at a time.
    workers = [(_sample(slot, memory=140 * MIB, growth=5 * MIB), LIMIT) for slot in range(4)]
    due, behind = memory_line(workers, Pace(recycle_s=5.0, interval=1.0))
    assert len(due) == 4 and len(behind) == 4
    assert "slot 0: forecast 15 MiB past --max-memory" in behind[0]
    _, behind = memory_line(workers, Pace(recycle_s=1.0, interval=1.0, concurrency=2))
    assert behind == []  # two at a time, 1 s each: every turn ends within a sampling interval of its crossing


def test_a_single_jump_near_the_limit_is_not_recycled_early() -> None:
    growth = Growth()
    for second, rss in enumerate([100, 100, 100, 100, 140, 140, 140, 140]):
        growth.add(WARMUP_S + second, rss * MIB)
    sample = _sample(0, memory=140 * MIB, growth=growth.rate())
    assert plan([(sample, LIMIT)], pace=Pace(recycle_s=30.0)) == []


def test_a_trend_counts_once_it_holds_on_consecutive_looks() -> None:
    growth = Growth()
    for look, (since_ready, rss) in enumerate(_series([100 + 3 * i for i in range(7)])):
        growth.add(since_ready, rss)
        assert (growth.rate() is not None) == (look >= 5)  # shown from the 5th look, counted from the 6th
    growth.add(WARMUP_S + 7, 150 * MIB)  # one jump breaks the trend: not a steady leak any more
    assert growth.rate() is None


def test_no_early_recycle_before_a_worker_has_grown_a_third_of_its_headroom() -> None:
    # Started at 120 MiB (30 MiB of headroom to 150), growing 10 MiB/s: at 125 MiB it may be a long warm-up.
    young = Sample(0, 1000, 6.0, 0, 125 * MIB, growth=10 * MIB, first_memory=120 * MIB)
    assert plan([(young, LIMIT)], pace=Pace()) == []
    grown = dataclasses.replace(young, memory=131 * MIB)  # 11 of 30 MiB grown: a leak, forecast in 1.9 s
    assert [d.slot for d in plan([(grown, LIMIT)], pace=Pace())] == [0]
    unknown = dataclasses.replace(grown, first_memory=0)  # no first sample: only the limit itself counts
    assert plan([(unknown, LIMIT)], pace=Pace()) == []

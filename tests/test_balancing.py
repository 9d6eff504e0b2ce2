"""The steering policy: weights from loads, how connections settle following them, and the report tracker."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

import pytest

from supervisor.steering import load_tracker
from supervisor.steering.balancing import (
    FLOOR_FRACTION,
    LOOKAHEAD,
    SlotLoad,
    compute_weights,
    least_loaded_weights,
    spread,
    weights_for,
)
from supervisor.steering.bpf import build_weighted_program
from supervisor.steering.bpf_eval import evaluate_program
from supervisor.steering.load_tracker import LoadTracker, Plan


def websockets(*counts: int, ineligible: Sequence[int] = ()) -> list[SlotLoad]:
    return [SlotLoad(slot, slot not in ineligible, count, 0, 0) for slot, count in enumerate(counts)]


@pytest.mark.parametrize("count", [0, 1, 37])
def test_equal_loads_get_equal_weights(count: int) -> None:
    assert compute_weights(websockets(count, count, count, count)) == [2500] * 4


def test_equal_loads_differ_only_by_rounding() -> None:
    weights = compute_weights(websockets(5, 5, 5))
    assert sum(weights) == 10_000 and max(weights) - min(weights) <= 1


def test_ineligible_slot_gets_zero() -> None:
    # Slot 1 is the least loaded, but it is not eligible (starting, draining, crashed...).
    assert compute_weights(websockets(3, 0, 3, 3, 3, ineligible=[1])) == [2500, 0, 2500, 2500, 2500]


def test_nothing_eligible_gives_all_zero() -> None:
    assert compute_weights(websockets(1, 2, 3, ineligible=[0, 1, 2])) == [0, 0, 0]
    assert compute_weights([]) == []


def test_only_eligible_slot_gets_everything() -> None:
    assert compute_weights(websockets(90, 0, 90, ineligible=[1, 2])) == [10_000, 0, 0]


def test_empty_worker_gets_most_but_not_all() -> None:
    weights = compute_weights(websockets(50, 50, 50, 0))
    floor = math.floor(10_000 * FLOOR_FRACTION / 4)
    assert weights[3] == max(weights) and weights[3] < 10_000
    assert weights[:3] == [floor] * 3 and floor > 0


def test_floor_zero_and_no_lookahead_is_winner_takes_all() -> None:
    weights = compute_weights(websockets(10, 10, 10, 9), floor_fraction=0, lookahead=0)
    assert weights == [0, 0, 0, 10_000]


def test_lookahead_spreads_a_burst() -> None:
    # One connection of difference must not send the next update's whole burst to slot 3.
    weights = compute_weights(websockets(10, 10, 10, 9))
    assert weights[3] == max(weights) and weights[3] < 4_000
    assert min(weights[:3]) > 2_000


def test_weights_sum_exactly() -> None:
    rng = random.Random(7)
    for total_weight in (10_000, 7, 997, 2**31):
        for _ in range(200):
            loads = [
                SlotLoad(slot, rng.random() < 0.8, rng.randrange(200), rng.randrange(50), rng.randrange(9))
                for slot in range(rng.randrange(1, 7))
            ]
            weights = compute_weights(loads, total_weight=total_weight)
            eligible = [load.slot for load in loads if load.eligible]
            assert sum(weights) == (total_weight if eligible else 0)
            assert all(weights[slot] > 0 for slot in eligible)


def test_more_load_never_gets_more_weight() -> None:
    rng = random.Random(11)
    for _ in range(300):
        counts = [rng.randrange(60) for _ in range(5)]
        weights = compute_weights(websockets(*counts))
        by_load = sorted(range(5), key=lambda slot: counts[slot])
        assert all(weights[a] >= weights[b] for a, b in zip(by_load, by_load[1:], strict=False))
        # The same slot with more load: its weight does not grow.
        slot = rng.randrange(5)
        heavier = list(counts)
        heavier[slot] += rng.randrange(1, 20)
        assert compute_weights(websockets(*heavier))[slot] <= weights[slot]


def test_every_connection_counts_the_same() -> None:
    # Queued, HTTP or upgraded: a WebSocket in the middle of its handshake must not make its worker look idle.
    loads = [
        SlotLoad(0, True, websocket=0, http=8, in_flight=0),
        SlotLoad(1, True, websocket=8, http=0, in_flight=0),
        SlotLoad(2, True, websocket=0, http=0, in_flight=0, accept_queue=8),
    ]
    assert compute_weights(loads) == [3334, 3333, 3333]


def test_accept_queue_and_in_flight_count_as_load() -> None:
    loads = [
        SlotLoad(0, True, 10, 0, 0),
        SlotLoad(1, True, 10, 0, 0, accept_queue=20),
        SlotLoad(2, True, 10, 0, in_flight=20),
    ]
    weights = compute_weights(loads)
    assert weights[0] > weights[2] > weights[1]


def test_loads_may_come_in_any_order() -> None:
    loads = websockets(0, 40, 40)
    assert compute_weights(list(reversed(loads))) == compute_weights(loads)


@pytest.mark.parametrize(
    ("loads", "message"),
    [
        ([SlotLoad(0, True, 1, 0, 0), SlotLoad(0, True, 1, 0, 0)], "once each"),
        ([SlotLoad(1, True, 1, 0, 0)], "once each"),
        ([SlotLoad(0, True, -1, 0, 0)], "negative"),
        ([SlotLoad(0, True, 1, 0, 0, report_age=math.nan)], "negative"),
    ],
)
def test_bad_loads_are_rejected(loads: list[SlotLoad], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_weights(loads)


def test_bad_knobs_are_rejected() -> None:
    with pytest.raises(ValueError, match="total_weight"):
        compute_weights(websockets(1), total_weight=0)
    with pytest.raises(ValueError, match="too small"):
        compute_weights(websockets(1, 1, 1), total_weight=2)
    with pytest.raises(ValueError, match="floor_fraction"):
        compute_weights(websockets(1), floor_fraction=1.5)
    with pytest.raises(ValueError, match="lookahead"):
        compute_weights(websockets(1), lookahead=math.nan)


def test_weights_for_estimates() -> None:
    # None: not eligible. Fractional estimates (predicted arrivals) are fine.
    assert weights_for([None, 2.5, 2.5]) == [0, 5000, 5000]
    assert weights_for([None, None]) == [0, 0]
    weights = weights_for([0.0, 30.0, 30.0], lookahead=10)
    assert weights[0] > weights[1] == weights[2]


def test_spread() -> None:
    assert spread([3, 3, 3]) == 1.0
    assert spread([0, 0]) == 1.0
    assert spread([0, 5]) == math.inf
    assert spread([2, 4, 3]) == 2.0
    with pytest.raises(ValueError):
        spread([])


def arrive(counts: list[int], clients: int, batch: int, rng: random.Random, *, stratified: bool) -> None:
    """Let `clients` WebSocket clients arrive in batches, each following the program built from the weights.

    Stratified draws (one random offset per batch, then evenly spaced values) give each slot its expected
    share to within one connection, so they test the policy itself; independent draws add sampling noise.
    """
    target = sum(counts) + clients
    while sum(counts) < target:
        size = min(batch, target - sum(counts))
        weights = compute_weights(websockets(*counts))
        program = build_weighted_program(weights)
        total = sum(weights)
        if stratified:
            offset = rng.random()
            values = [int((index + offset) * total / size) for index in range(size)]
        else:
            values = [rng.getrandbits(32) for _ in range(size)]
        for value in values:
            counts[evaluate_program(program, value)] += 1


def test_connections_settle_evenly() -> None:
    for seed in range(20):
        counts = [0, 0, 0, 0]
        arrive(counts, 400, 25, random.Random(seed), stratified=True)
        assert spread(counts) <= 1.05, (seed, counts)


def test_connections_settle_evenly_with_sampling_noise() -> None:
    # With independent draws the last batch alone leaves ~2 connections of noise per slot (binomial, n=25), so
    # max/min <= 1.05 holds for only ~40% of seeds; bound what the policy controls. Without steering (uniform
    # random choice), 400 connections over 4 slots give a mean spread of ~1.25.
    spreads = []
    for seed in range(30):
        counts = [0, 0, 0, 0]
        arrive(counts, 400, 25, random.Random(seed), stratified=False)
        spreads.append(spread(counts))
    assert max(spreads) <= 1.15
    assert statistics.mean(spreads) <= 1.08


def test_replacement_after_a_crash_catches_up() -> None:
    # Slot 3's worker crashed and was replaced; its 100 clients reconnect in batches of 10.
    for seed in range(10):
        counts = [100, 100, 100, 0]
        arrive(counts, 100, 10, random.Random(seed), stratified=True)
        assert counts[3] >= 93, (seed, counts)
        assert max(counts[:3]) <= 103, (seed, counts)
    for seed in range(10):
        counts = [100, 100, 100, 0]
        arrive(counts, 100, 10, random.Random(seed), stratified=False)
        assert counts[3] >= 90, (seed, counts)


def test_a_refill_towards_the_final_share_does_not_leak_to_full_slots() -> None:
    # A reload: two replaced workers, one at its final share of 100, one filling; 6 clients still to come back.
    weights = weights_for([100.0, 94.0, None, None], lookahead=4.0, floor_fraction=0.0, min_fair_share=100.0)
    assert weights == [0, 10_000, 0, 0]
    # Without returning load, the lookahead spreads the next batch over both, as for any burst.
    spread_out = weights_for([100.0, 94.0, None, None], lookahead=4.0, floor_fraction=0.0)
    assert 0 < spread_out[0] < spread_out[1]


# --- LoadTracker: weights from the counts each worker shares ------------------------------------------------------
def shared(
    slot: int, live: int, accepted: int | None = None, *, queue: int = 0, age: float = 0.02, eligible: bool = True
) -> SlotLoad:
    """One slot as the supervisor sees it: its worker's shared counts (``accepted`` defaults to ``live``)."""
    accepted = live if accepted is None else accepted
    return SlotLoad(slot, eligible, live, 0, 0, queue, age, accepted, live)


SETTLED = load_tracker.EXACT_SETTLE_S + 0.001  # the supervisor's re-plan once a sparse arrival has settled


def step(tracker: LoadTracker, now: float, loads: Sequence[SlotLoad]) -> Plan:
    tracker.observe(now, loads)
    return tracker.plan(now, loads)


def test_tracker_gives_equal_loads_equal_weights() -> None:
    tracker = LoadTracker()
    plan = step(tracker, 1.0, [shared(slot, 40) for slot in range(4)])
    assert max(plan.weights) - min(plan.weights) <= 1
    assert plan.stalled == [] and plan.exact and not plan.fast


def test_replacement_worker_gets_most_of_the_weight() -> None:
    tracker = LoadTracker()
    plan = step(tracker, 1.0, [shared(0, 100), shared(1, 100), shared(2, 100), shared(3, 0)])
    assert plan.weights[3] >= 0.9 * sum(plan.weights)


def test_shared_counts_and_the_accept_queue_are_the_load_not_the_report() -> None:
    # The reports say 0 (the workers are too busy to send them); the shared counts and the queue say otherwise.
    loads = [SlotLoad(slot, True, 0, 0, 0, 5 if slot == 1 else 0, 0.3, 30, 30) for slot in range(3)]
    loads.append(SlotLoad(3, True, 0, 0, 0, 0, 0.3, 0, 0))
    plan = step(LoadTracker(), 1.0, loads)
    assert plan.estimates == [30, 35, 30, 0]
    assert plan.weights[3] >= 0.9 * sum(plan.weights)


def test_without_shared_counts_the_report_is_the_load() -> None:
    plan = step(LoadTracker(), 1.0, [SlotLoad(0, True, 10, 5, 0, 1), SlotLoad(1, True, 0, 0, 0)])
    assert plan.estimates == [16, 0]


def test_a_burst_speeds_updates_up_and_widens_nothing_it_should_not() -> None:
    tracker = LoadTracker()
    step(tracker, 1.0, [shared(slot, 0) for slot in range(4)])
    plan = step(tracker, 1.02, [shared(slot, 10) for slot in range(4)])  # 40 new connections in 20 ms
    assert plan.fast and plan.arrivals_per_s == pytest.approx(2000)
    # The lookahead covers what arrives before the next (fast) update: 2000/s x 5 ms / 4 slots, at least LOOKAHEAD.
    assert plan.lookahead == pytest.approx(max(LOOKAHEAD, 2000 * load_tracker.FAST_HORIZON_S / 4))
    # Once nothing grows for FAST_HOLD_S, updates slow down again, and the rates fade.
    calm = step(tracker, 1.02 + load_tracker.FAST_HOLD_S + 0.05, [shared(slot, 10) for slot in range(4)])
    assert not calm.fast and calm.arrivals_per_s < plan.arrivals_per_s
    later = step(tracker, 5.0, [shared(slot, 10) for slot in range(4)])
    assert later.arrivals_per_s < 1 and later.exact  # quiet again: each arrival is placed on its own


def test_a_stream_of_short_connections_does_not_need_fast_updates() -> None:
    # One connection per request: thousands arrive, as many leave, the live counts stay flat.
    tracker = LoadTracker()
    now, accepted = 1.0, 0
    for _ in range(20):
        plan = step(tracker, now, [shared(slot, 30, accepted) for slot in range(2)])
        now, accepted = now + 0.05, accepted + 200
    assert not plan.fast and plan.arrivals_per_s == pytest.approx(8000)
    assert plan.churn_per_s == pytest.approx(16000)
    # Its lookahead is wide (it holds for a slow update), so the weights stay close to even.
    plan = step(tracker, now, [shared(0, 24, accepted), shared(1, 36, accepted)])
    assert min(plan.weights) >= 0.45 * sum(plan.weights)


def test_a_keep_alive_pool_gets_mild_weights_while_calm() -> None:
    # 64 keep-alive connections placed [8, 56]: the pool may close and reconnect at once, unseen until it has,
    # so the program in force must not send it all to slot 0 ([8, 56] once gave 99.5%/0.5%).
    loads = [SlotLoad(0, True, 0, 8, 0, 0, 0.02, 8, 8), SlotLoad(1, True, 0, 56, 0, 0, 0.02, 56, 56)]
    plan = step(LoadTracker(), 1.0, loads)
    assert not plan.fast and plan.lookahead == pytest.approx(load_tracker.HTTP_LOOKAHEAD * 32)
    assert 0.25 * sum(plan.weights) <= plan.weights[1] < plan.weights[0]


def test_sparse_arrivals_go_to_a_least_loaded_slot_each() -> None:
    # Four WebSockets arriving 0.2 s apart: each plan sends the next one to a slot that has none, ties split evenly.
    tracker = LoadTracker()
    counts = [0, 0, 0, 0]
    now = 1.0
    for arrival in range(8):
        loads = [shared(slot, count) for slot, count in enumerate(counts)]
        plan = step(tracker, now, loads)  # at the arrival: the mild program while a pool may still be coming in
        assert plan.settling == (arrival > 0) and plan.exact == (arrival == 0) and not plan.fast
        plan = step(tracker, now + SETTLED, loads)  # quiet since: the exact one
        assert plan.exact and not plan.settling and not plan.fast
        low = min(counts)
        assert all((weight > 0) == (count == low) for weight, count in zip(plan.weights, counts, strict=True))
        assert max(plan.weights) - min(w for w in plan.weights if w) <= 1  # ties: equal, to integer rounding
        program = build_weighted_program(plan.weights)
        counts[evaluate_program(program, random.Random(arrival).getrandbits(32))] += 1
        now += 0.2
    assert counts == [2, 2, 2, 2]


def test_one_arrival_soon_after_a_routine_plan_is_still_sparse() -> None:
    # An idle instance plans on each worker's once-a-second report. An arrival 12 ms after such a plan is one
    # connection after a second of quiet, not 83 a second: it must keep exact placement, or the next arrival
    # is a weighted draw (seen: 2 of 4 sparse WebSockets on one worker after idle spells).
    tracker = LoadTracker()
    step(tracker, 1.0, [shared(slot, 0) for slot in range(4)])
    step(tracker, 2.0, [shared(slot, 0) for slot in range(4)])  # a heartbeat report, nothing arrived
    plan = step(tracker, 2.012, [shared(0, 1), shared(1, 0), shared(2, 0), shared(3, 0)])
    assert plan.settling and plan.arrivals_per_s <= 1.0
    plan = step(tracker, 2.012 + SETTLED, [shared(0, 1), shared(1, 0), shared(2, 0), shared(3, 0)])
    assert plan.exact and plan.weights[0] == 0
    # The 20 ms recheck and the next routine plans keep it so.
    assert step(tracker, 2.032, [shared(0, 1), shared(1, 0), shared(2, 0), shared(3, 0)]).exact
    # A real stream still counts as one: 5 arrivals in 50 ms, each seen within 10 ms of the last.
    now, accepted = 3.0, 1
    for _ in range(5):
        now, accepted = now + 0.011, accepted + 1
        plan = step(tracker, now, [shared(0, accepted), shared(1, 0), shared(2, 0), shared(3, 0)])
    assert plan.arrivals_per_s >= load_tracker.EXACT_MAX_ARRIVALS_PER_S and not plan.exact


def test_a_pool_connecting_at_once_after_an_idle_spell_is_not_sent_to_one_slot() -> None:
    # wrk or a proxy opens 64 keep-alive connections within a millisecond, after seconds of quiet. The plan made at
    # the first of them must not send the rest to the slot that had one fewer: the whole pool would land there.
    tracker = LoadTracker()
    step(tracker, 1.0, [shared(0, 0), shared(1, 0)])
    step(tracker, 5.0, [shared(0, 0), shared(1, 0)])
    plan = step(tracker, 5.0005, [shared(0, 1), shared(1, 0)])
    assert plan.settling and not plan.exact
    assert min(plan.weights) >= 0.45 * sum(plan.weights), plan.weights
    # Still arriving 3 ms later: still no exact program (and too soon to measure a rate).
    plan = step(tracker, 5.0035, [shared(0, 30), shared(1, 34)])
    assert plan.settling and not plan.exact and min(plan.weights) >= 0.4 * sum(plan.weights), plan.weights
    # Once it is all in and the arrivals have faded, a lone arrival is placed exactly again.
    quiet = [shared(0, 32), shared(1, 32)]
    for now in (6.0, 7.0):
        plan = step(tracker, now, quiet)
    assert plan.exact and plan.weights[0] == plan.weights[1]


def test_a_stream_of_short_connections_goes_to_the_shared_queue() -> None:
    # 2,000 connections a second, as many leaving: any worker may take any of them (the shared queue).
    def stream(websockets: list[int], eligible: bool = True, returning: float | None = None) -> Plan:
        tracker = LoadTracker()
        now, accepted = 1.0, 0
        for _ in range(6):
            loads = [
                SlotLoad(slot, eligible or slot == 0, ws, 10, 0, 0, 0.02, accepted + ws, 10 + ws)
                for slot, ws in enumerate(websockets)
            ]
            tracker.observe(now, loads)
            plan = tracker.plan(now, loads, returning=returning)
            now, accepted = now + 0.05, accepted + 50
        return plan

    plan = stream([0, 0])
    assert plan.arrivals_per_s >= load_tracker.STREAM_MIN_ARRIVALS_PER_S and not plan.fast and not plan.exact
    assert plan.shared_share == 1.0
    assert stream([100, 103]).shared_share == 1.0  # WebSockets even, to within the tolerance
    assert stream([100, 140]).shared_share == load_tracker.STREAM_CORRECTING_SHARE  # uneven: half steered
    assert stream([0, 0], eligible=False).shared_share == 0.0  # a slot left out: its worker must get nothing
    assert stream([0, 0], returning=5.0).shared_share == 0.0  # a reload: every client placed
    # Sparse arrivals and bursts are placed one by one, never through the shared queue; nor is what follows a burst
    # of WebSockets (the arrival rate is still fading, but nothing arrives or leaves any more).
    tracker = LoadTracker()
    assert step(tracker, 1.0, [shared(slot, 0) for slot in range(2)]).shared_share == 0.0
    assert step(tracker, 1.02, [shared(slot, 200) for slot in range(2)]).shared_share == 0.0
    after = step(tracker, 1.15, [shared(slot, 200) for slot in range(2)])
    assert not after.fast and after.arrivals_per_s >= load_tracker.STREAM_MIN_ARRIVALS_PER_S
    assert after.shared_share == 0.0


def test_exact_placement_is_for_sparse_arrivals_without_keep_alive_pools() -> None:
    assert least_loaded_weights([3.0, None, 1.0, 1.0]) == [0, 0, 5000, 5000]
    assert least_loaded_weights([None, None]) == [0, 0]
    # A steady stream of short connections (50/s and more) gets smooth weights, not everything to one slot.
    tracker = LoadTracker()
    now, accepted = 1.0, 0
    for _ in range(10):
        plan = step(tracker, now, [shared(0, 2, accepted), shared(1, 3, accepted)])
        now, accepted = now + 0.05, accepted + 5
    assert plan.arrivals_per_s >= load_tracker.EXACT_MAX_ARRIVALS_PER_S and not plan.exact
    assert min(plan.weights) > 0
    # Keep-alive pools (two or more HTTP connections per slot) keep mild weights: a pool reconnects unseen.
    pool = [SlotLoad(slot, True, 0, 3, 0, 0, 0.02, 3 + slot, 3 + slot) for slot in range(2)]
    assert not step(LoadTracker(), 1.0, pool).exact
    # During a reload's refill, the refill policy applies.
    assert not LoadTracker().plan(1.0, [shared(0, 1), shared(1, 0)], returning=10.0).exact


def test_a_new_worker_on_a_slot_counts_from_zero() -> None:
    tracker = LoadTracker()
    step(tracker, 1.0, [shared(0, 50, 5000), shared(1, 50, 5000)])
    plan = step(tracker, 1.05, [shared(0, 50, 5000), shared(1, 0, 0)])  # slot 1 replaced
    assert plan.arrivals_per_s == 0 and plan.weights[1] >= 0.9 * sum(plan.weights)


def test_a_silent_worker_with_waiting_connections_is_left_out() -> None:
    tracker = LoadTracker()
    step(tracker, 0.5, [shared(slot, 10) for slot in range(4)])
    loads = [shared(0, 10, queue=3, age=0.3), shared(1, 10, age=0.02), shared(2, 10, age=0.05), shared(3, 10, age=0.08)]
    plan = step(tracker, 1.0, loads)
    assert plan.stalled == [0] and plan.weights[0] == 0 and min(plan.weights[1:]) > 0
    # Left out, it stays out while it is silent, though nobody waits on it any more (its weight is 0)...
    assert tracker.stalled(1.1, [shared(0, 10, age=0.4), *loads[1:]]) == [0]
    # ...and is back once it reports again.
    assert tracker.stalled(1.2, [shared(0, 10, age=0.02), *loads[1:]]) == []
    # Never left out, a silent worker that nobody waits on is not singled out (a busy loop harms nobody)...
    assert LoadTracker().stalled(1.0, [shared(0, 10, age=0.3), *loads[1:]]) == []
    # ...but silent for over a second, it is left out anyway.
    assert LoadTracker().stalled(1.0, [shared(0, 10, age=1.2), *loads[1:]]) == [0]


def test_workers_that_are_all_behind_are_busy_not_stalled() -> None:
    # A burst on busy cores: every worker reports late. None of them is singled out.
    tracker = LoadTracker()
    ages = [0.5, 0.4, 0.45, 0.38]
    assert tracker.stalled(0.0, [SlotLoad(slot, True, 90, 10, 0, 5, age) for slot, age in enumerate(ages)]) == []
    # A worker the supervisor already left out (silent for too long) still counts as a peer.
    loads = [
        SlotLoad(0, True, 90, 10, 0, 5, 0.3),
        SlotLoad(1, False, 90, 0, 0, 0, 0.6),
        SlotLoad(2, True, 9, 0, 0, 0, 0.0),
    ]
    assert tracker.stalled(0.0, loads) == []


def test_a_worker_that_just_took_a_burst_may_lag_more() -> None:
    # Handshaking 100 new connections keeps a loop busy for a while: 0.3 s late then is load, not a stall.
    late = [shared(0, 100, queue=6, age=0.35), *(shared(slot, 100, age=0.05) for slot in (1, 2, 3))]
    tracker = LoadTracker()
    step(tracker, 0.2, late)  # it has held its 100 for a while
    assert tracker.stalled(1.0, late) == [0]
    tracker = LoadTracker()
    step(tracker, 0.7, [shared(slot, 0) for slot in range(4)])
    tracker.observe(1.0, late)  # it took them just now
    assert tracker.stalled(1.0, late) == []


def test_a_worker_accepting_from_its_queue_is_not_stalled() -> None:
    tracker = LoadTracker()
    step(tracker, 0.9, [shared(0, 10, queue=9, age=0.25), *(shared(slot, 10) for slot in (1, 2, 3))])
    loads = [shared(0, 12, queue=7, age=0.35), *(shared(slot, 10) for slot in (1, 2, 3))]
    assert step(tracker, 1.0, loads).stalled == []


def test_a_resized_group_starts_over() -> None:
    tracker = LoadTracker()
    step(tracker, 0.5, [shared(slot, 10) for slot in range(4)])
    plan = step(tracker, 0.55, [shared(slot, 10) for slot in range(3)])
    assert len(plan.weights) == 3 and max(plan.weights) - min(plan.weights) <= 1

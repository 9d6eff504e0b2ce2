"""Where each slot's load stands now, and how fast connections arrive: the input of the steering weights.

``LoadTracker`` turns what the supervisor sees of each slot (the live connection count its worker keeps in shared
memory, the kernel's accept queue, the worker's last report) into the weights of the steering program. Pure: the
clock is passed in, so tests drive it without processes. ``steering.Steering`` feeds it and attaches what it plans.

The counts are exact and current (ipc.counters), so the tracker does not have to guess where a burst went since
the workers last reported; what it still decides is how hard to correct (the lookahead: the connections each slot
will receive before the next update), whether connections are piling up so fast that the next update should come
at once (``Plan.fast``), and which workers are stalled.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.steering.balancing import (
    FLOOR_FRACTION,
    LOOKAHEAD,
    SlotLoad,
    connections,
    estimated_load,
    least_loaded_weights,
    validated,
    weights_for,
)

# A worker reports at least every heartbeat (0.1 s) from its event loop. One silent for this much longer than
# its peers, with connections waiting in its accept queue, has a blocked loop: weight 0 until it reports again.
# Relative to the peers, because under a burst on 2 busy cores every worker's reports fall behind (gaps of
# 0.3-0.8 s were measured): that is load, not a stall. And only with connections waiting, because a busy worker
# whose queue is empty harms nobody, and leaving it out would only unbalance the burst.
STALL_S = 0.15
# A worker that just took a burst is busy handshaking (400 at once kept 4 workers busy 0.2-0.45 s on this
# project's 2-core machine: 2-4 ms per connection), so it may lag its peers without being stuck: allow 2 ms per
# connection it took in the last BUSY_WINDOW_S (or has waiting), up to a cap. Its own count, not the group's
# rate: a stall right after a burst elsewhere must still be caught at once.
BUSY_PER_CONNECTION_S = 0.002
BUSY_WINDOW_S = 0.5
BUSY_MAX_S = 0.35
# Silent this long, a worker is left out even with an empty queue (nobody is waiting, but nobody should).
STALL_EMPTY_S = 1.0
# How long the program in force lasts: while connections pile up, the next update follows within FAST_HORIZON_S
# (steering.FAST_INTERVAL_S plus the supervisor's wake-up); otherwise within SLOW_HORIZON_S (the next report).
FAST_HORIZON_S = 0.005
SLOW_HORIZON_S = 0.1
# Lookahead = safety x arrivals per slot expected while a program is in force. Below 1 the loop overshoots (below
# 0.5 it oscillates and grows); above 1 it only corrects more slowly.
LOOKAHEAD_SAFETY = 1.0
# The lookahead is at least this multiple of the mean live keep-alive HTTP connections per slot (see plan).
HTTP_LOOKAHEAD = 2.0
# Connections pile up when the live total grows by at least this many, and by at least this share of the arrivals
# (a steady stream of short HTTP connections arrives fast but does not grow: no need to follow it closely).
FAST_MIN_GROWTH = 2
FAST_GROWTH_SHARE = 0.5
# Once they do, updates stay fast this long after the last growth: a burst's tail is as random as its head.
FAST_HOLD_S = 0.1
# Exact placement: while connections arrive slower than this, every arrival wakes the supervisor (the arrival watch,
# re-armed within steering.EXACT_INTERVAL_S) and the program sends the next one to a least-loaded slot (ties split
# evenly), instead of a weighted random draw. 50/s leaves 20 ms between arrivals on average against the ~1-3 ms the
# supervisor takes to see one and re-plan. Faster streams and bursts get the smooth weights below.
EXACT_MAX_ARRIVALS_PER_S = 50.0
# ...and only while keep-alive HTTP connections are few: a pool (wrk, a proxy's upstream pool) closes and reconnects
# within a millisecond, before any re-plan, so with everything pointed at one slot the whole pool would land there.
EXACT_MAX_HTTP_PER_SLOT = 2.0
# A stream of short connections goes to the group's shared queue (supervisor.process.listeners), which every worker
# accepts from, so none waits in a busy worker's queue while another idles: from this many arrivals a second, with
# no burst, reload or stall going on. Below it queues stay short and placing each connection costs nothing. Rates
# of the last measurement, not the fading ones: a burst of WebSockets that just ended is no stream.
STREAM_MIN_ARRIVALS_PER_S = 500.0
# ...and short means that they leave about as fast as they come: at least this share of the arrivals.
STREAM_MIN_DEPARTURE_SHARE = 0.5
# ...all of it while the workers' WebSocket counts are within this of each other (the larger of the two); beyond,
# half of it, the other half steered, so that WebSockets arriving in the stream are evened out again.
STREAM_WS_SPREAD = 4
STREAM_WS_SPREAD_SHARE = 0.05
STREAM_CORRECTING_SHARE = 0.5
# ...but only once no connection has arrived for this long. A program that sends everything to one slot is right
# for the next lone arrival, and wrong for a pool that connects all at once after an idle spell (wrk, a proxy
# opening its upstream pool: 64 connections within a millisecond, before any re-plan): the whole pool landed on one
# of two workers in 12 of 20 runs (bench/paired.py). Until then the program is a mild one (Plan.settling), and the
# supervisor re-plans when the spell has passed. 5 ms: a pool is in by then, and at 50 arrivals a second four in
# five lone arrivals still come later than that.
EXACT_SETTLE_S = 0.005
# The mild program's lookahead: two slots at 1 and 0 connections get 48% and 52% of a pool.
SETTLE_LOOKAHEAD = 16.0
# Rates are measured over at least this long, and fade this fast once arrivals stop.
RATE_WINDOW_S = 0.01
RATE_DECAY_S = 0.3


@dataclass(frozen=True, slots=True)
class Plan:
    weights: list[int]
    estimates: list[float | None]  # each slot's load now; None: gets no new connections
    stalled: list[int]  # eligible slots left out because their worker went silent
    lookahead: float
    arrivals_per_s: float
    churn_per_s: float  # arrivals + departures
    fast: bool  # connections are piling up: update again within steering.FAST_INTERVAL_S
    exact: bool = False  # arrivals are sparse: everything to the least-loaded slots, re-planned at each arrival
    shared_share: float = 0.0  # of new connections, the share for the shared queue (a stream of short ones)
    settling: bool = False  # sparse, but one just arrived: mild weights until EXACT_SETTLE_S has passed quietly


class LoadTracker:
    """Turns each slot's current counts into weights, sized to how fast connections arrive."""

    def __init__(self, *, floor_fraction: float = FLOOR_FRACTION) -> None:
        self.floor_fraction = floor_fraction
        # Per slot: (time, connections placed on it so far: accepted by its worker + waiting in its queue).
        self._placed: list[collections.deque[tuple[float, int]]] = []
        self._reference: tuple[float, list[int], float] | None = None  # (time, placed per slot, live total) then
        self._arrivals = (0.0, 0.0)  # (connections per second, measured at), fading with RATE_DECAY_S
        self._arrived_at = 0.0  # when the last measurement that saw an arrival was made
        self._placed_total: int | None = None  # connections placed on all slots at the last observe
        self._arrival_seen_at = -math.inf  # the last observe that saw the placed total grow (not windowed)
        self._churn = (0.0, 0.0)  # arrivals + departures
        self._now_rates = (0.0, 0.0)  # (arrivals, departures) per second over the last measurement alone
        self._growing_at = -math.inf  # when the live total last grew faster than a steady stream explains
        # Per slot: the last accept-queue length seen, and when it last went down (the worker is accepting).
        self._queue: list[tuple[int, float]] = []
        # Slots left out for silence at the last plan, with their report age then: out until they report again.
        self._silenced: dict[int, float] = {}

    def observe(self, now: float, loads: Sequence[SlotLoad]) -> None:
        """Record what each slot shows now; call it before every ``plan`` and ``stalled``."""
        if len(self._placed) != len(loads):
            self._placed = [collections.deque() for _ in loads]
            self._queue = [(0, 0.0)] * len(loads)
            self._reference = None
        for load in loads:
            queued, drained_at = self._queue[load.slot]
            self._queue[load.slot] = (load.accept_queue, now if load.accept_queue < queued else drained_at)
            history = self._placed[load.slot]
            if load.accepted_now is None or not load.eligible:
                history.clear()  # no worker taking connections; the next one counts from zero
                continue
            placed = load.accepted_now + load.accept_queue
            if history and placed < history[-1][1]:
                history.clear()  # a new worker on the slot (its count starts over)
            history.append((now, placed))
            while len(history) > 1 and history[1][0] <= now - BUSY_WINDOW_S:
                history.popleft()
        placed_total = sum(history[-1][1] for history in self._placed if history)
        if self._placed_total is not None and placed_total > self._placed_total:
            self._arrival_seen_at = now
        self._placed_total = placed_total
        self._measure(now, loads)

    def _measure(self, now: float, loads: Sequence[SlotLoad]) -> None:
        placed = [history[-1][1] if history else 0 for history in self._placed]
        live = sum(connections(load) for load in loads if load.eligible)
        if self._reference is None:
            self._reference = (now, placed, live)
            self._arrived_at = now
            return
        before_at, before, live_before = self._reference
        elapsed = now - before_at
        if elapsed < RATE_WINDOW_S:
            return
        arrived = sum(max(0, new - old) for new, old in zip(placed, before, strict=True))
        growth = live - live_before
        departed = max(0.0, arrived - growth)
        # One arrival is one over the time since the previous one, not over the time since the last plan: a
        # routine plan 12 ms before a lone arrival after a quiet second made it 83/s and ended exact placement.
        span = max(elapsed, now - self._arrived_at) if arrived == 1 else elapsed
        if arrived:
            self._arrived_at = now
        self._arrivals = (max(arrived / span, self._rate(self._arrivals, now)), now)
        self._churn = (max((arrived + departed) / elapsed, self._rate(self._churn, now)), now)
        self._now_rates = (arrived / elapsed, departed / elapsed)
        if growth >= max(FAST_MIN_GROWTH, FAST_GROWTH_SHARE * arrived):
            self._growing_at = now
        self._reference = (now, placed, live)

    def stalled(self, now: float, loads: Sequence[SlotLoad], *, empty_queue_too: bool = False) -> list[int]:
        """Eligible slots whose worker went silent while its peers did not: its event loop is blocked.

        ``empty_queue_too``: also one that nobody waits on yet, for exact placement, which would send it everything.
        """
        stalled = []
        for load in loads:
            if not load.eligible or load.report_age < STALL_S:
                continue
            # Peers: every other slot with a worker (report_age 0 means none), eligible or not: a worker the
            # supervisor already left out for silence still says how late reports are running.
            peers = [other.report_age for other in loads if other.slot != load.slot and other.report_age > 0]
            late = load.report_age - (statistics.median(peers) if peers else 0.0)
            busy = min(BUSY_MAX_S, (self._taken(load.slot) + load.accept_queue) * BUSY_PER_CONNECTION_S)
            # A worker whose queue went down since its last report is accepting: its reports are late because the
            # machine is saturated (seen on 2 busy cores), not because its loop is stuck.
            _, drained_at = self._queue[load.slot] if load.slot < len(self._queue) else (0, 0.0)
            accepting = drained_at > now - load.report_age
            if load.report_age >= self._silenced.get(load.slot, math.inf) and not accepting:
                stalled.append(load.slot)  # left out before and still silent: weight 0 until it reports again
                continue
            waited_on = load.accept_queue > 0 or empty_queue_too
            if late >= STALL_EMPTY_S or (late >= STALL_S + busy and waited_on and not accepting):
                stalled.append(load.slot)
        return stalled

    def plan(self, now: float, loads: Sequence[SlotLoad], *, returning: float | None = None) -> Plan:
        """The weights for ``loads`` (already passed to ``observe``).

        ``returning`` is load outside the slots that will reconnect (a reload's draining workers): with it, the fair
        share is the whole instance's load per slot, see ``weights_for``'s ``min_fair_share``.
        """
        ordered = validated(loads)
        stalled = self.stalled(now, ordered)
        if stalled and all(load.slot in stalled for load in ordered if load.eligible):
            # Never leave out every slot that may take connections: with no weight anywhere the kernel's hash
            # takes over, and it knows nothing of slots being replaced or removed. They are busy, not lost.
            stalled = []
        self._silenced = {load.slot: load.report_age for load in ordered if load.slot in stalled}
        estimates: list[float | None] = [None] * len(ordered)
        for load in ordered:
            if load.eligible and load.slot not in stalled:
                estimates[load.slot] = estimated_load(load)
        live = sum(1 for estimate in estimates if estimate is not None)
        fast = now - self._growing_at <= FAST_HOLD_S
        arrivals = self._rate(self._arrivals, now)
        horizon = FAST_HORIZON_S if fast else SLOW_HORIZON_S
        lookahead = LOOKAHEAD
        if live:
            # Keep-alive HTTP connections come in pools that close and reconnect all at once (wrk between two
            # runs, a proxy recycling its upstream pool). The closes wake nobody and the new pool connects within a
            # millisecond, so it all follows the program planned for the old pool: [8, 56] gave 99.5%/0.5%, and the
            # next pool landed [64, 0]. Expecting the mean HTTP count per slot twice over keeps those weights mild.
            # Not while connections pile up: then the reports count WebSockets still in their handshake as HTTP,
            # and mild weights would leave a burst to chance (400 at once: max/min 1.13 instead of 1.04).
            expected = LOOKAHEAD_SAFETY * arrivals * horizon / live
            if not fast:
                http_mean = sum(load.http for load in ordered if estimates[load.slot] is not None) / live
                expected = max(expected, HTTP_LOOKAHEAD * http_mean)
            lookahead = max(LOOKAHEAD, expected)
        if live and not fast and returning is None and arrivals < EXACT_MAX_ARRIVALS_PER_S:
            http_mean = sum(load.http for load in ordered if estimates[load.slot] is not None) / live
            if http_mean < EXACT_MAX_HTTP_PER_SLOT:
                # Connections only (whole numbers), so equal slots tie exactly; requests in flight do not count here.
                # A silent worker is no target even with nobody waiting on it: it would be sent every arrival.
                quiet = set(self.stalled(now, ordered, empty_queue_too=True))
                if len(quiet) < live:
                    stalled = sorted(set(stalled) | quiet)
                    # Out until it reports again, in whatever mode the next plan is (a burst may come next).
                    self._silenced.update({load.slot: load.report_age for load in ordered if load.slot in quiet})
                counts = [
                    float(connections(load)) if estimates[load.slot] is not None and load.slot not in quiet else None
                    for load in ordered
                ]
                if all(count is None for count in counts):
                    counts = [
                        float(connections(load)) if e is not None else None
                        for load, e in zip(ordered, estimates, strict=True)
                    ]
                churn = self._rate(self._churn, now)
                if now - self._arrival_seen_at < EXACT_SETTLE_S:
                    weights = weights_for(counts, lookahead=SETTLE_LOOKAHEAD, floor_fraction=self.floor_fraction)
                    return Plan(weights, estimates, stalled, SETTLE_LOOKAHEAD, arrivals, churn, fast, settling=True)
                return Plan(least_loaded_weights(counts), estimates, stalled, 0.0, arrivals, churn, fast, True)
        min_fair_share = 0.0
        if returning is not None and ordered:
            min_fair_share = (sum(connections(load) for load in ordered) + returning) / len(ordered)
        weights = weights_for(
            estimates, lookahead=lookahead, floor_fraction=self.floor_fraction, min_fair_share=min_fair_share
        )
        share = 0.0
        if not fast and returning is None and not stalled and self._streaming():
            share = stream_share(ordered)
        return Plan(weights, estimates, stalled, lookahead, arrivals, self._rate(self._churn, now), fast, False, share)

    def _streaming(self) -> bool:
        """Short connections are coming and going fast, now (see STREAM_MIN_ARRIVALS_PER_S)."""
        arriving, leaving = self._now_rates
        return arriving >= STREAM_MIN_ARRIVALS_PER_S and leaving >= STREAM_MIN_DEPARTURE_SHARE * arriving

    def _taken(self, slot: int) -> int:
        """Connections placed on ``slot`` in the last BUSY_WINDOW_S."""
        history = self._placed[slot] if slot < len(self._placed) else None
        return history[-1][1] - history[0][1] if history else 0

    @staticmethod
    def _rate(rate: tuple[float, float], now: float) -> float:
        value, measured_at = rate
        return value * math.exp(-max(0.0, now - measured_at) / RATE_DECAY_S)


def stream_share(loads: Sequence[SlotLoad]) -> float:
    """The shared queue's share of a stream of short connections: any worker may take any of them, so only while
    every slot may (none starting, draining, pending replacement or left out), and less while the workers'
    WebSocket counts are uneven."""
    if not loads or not all(load.eligible for load in loads):
        return 0.0
    websockets = [load.websocket for load in loads]
    spread = max(websockets) - min(websockets)
    if spread <= max(STREAM_WS_SPREAD, STREAM_WS_SPREAD_SHARE * sum(websockets) / len(websockets)):
        return 1.0
    return STREAM_CORRECTING_SHARE

"""Where each slot's load stands now, estimated from reports that arrive late and at different times.

``LoadTracker`` turns the workers' reports into the weights of the steering program: pure, the clock is passed
in, so tests drive it without processes. ``steering.Steering`` feeds it and attaches what it plans.
"""

from __future__ import annotations

import collections
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.balancing import FLOOR_FRACTION, LOOKAHEAD, Costs, SlotLoad, validated, weights_for

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
# The lookahead covers the connections expected while this program is in force (one update interval), plus
# those predicted rather than seen since the common instant.
HORIZON_S = 0.1  # steering.MIN_INTERVAL_S
# Lookahead = safety x expected churn per slot. Below 1 the loop overshoots (below 0.5 it oscillates and grows);
# above 1 it only corrects more slowly, and every extra update leaves more of a burst to chance.
LOOKAHEAD_SAFETY = 1.0
# The lookahead is at least this multiple of the mean live HTTP connections per slot (see LoadTracker.plan). Traced:
# a pool of 64 keep-alive connections that closed and reconnected at once inherited the weights meant to correct
# the old pool's imbalance ([24, 40] gave 80/20, and the new pool landed [49, 15]). At 2x the mean, a burst that
# replaces every connection halves the imbalance instead of reversing or amplifying it.
HTTP_LOOKAHEAD = 2.0
# How fast a measured rate fades after a burst (exponential, seconds): long enough to cover counts that are
# still settling (closes reported late), short enough not to slow the refill of a replaced worker.
RATE_DECAY_S = 0.3
# Rates between common instants are measured over at least this long.
RATE_WINDOW_S = 0.05
# A change in one slot's report this far beyond what the current rate explains (Poisson sigmas, plus a few
# connections) is the start of a burst or a mass disconnect: raise the rate now, not one window later.
SURPRISE_SIGMAS = 3.0
SURPRISE_MIN = 4.0
# A slot's drop in load counts only after it has lasted this long (see LoadTracker._held).
HOLD_S = 0.3
# Arrivals since the common instant are predicted for at most this long (reports are rarely older).
MAX_PREDICTION_S = 0.5
HISTORY = 32  # reports kept per slot: enough to interpolate at the oldest live slot's report under load
SAME_REPORT_S = 0.001  # two loads whose report times differ by less are the same report seen twice


@dataclass(frozen=True, slots=True)
class Plan:
    weights: list[int]
    estimates: list[float | None]  # each slot's estimated load now; None: gets no new connections
    stalled: list[int]  # eligible slots left out because their worker went silent
    lookahead: float
    arrivals_per_s: float
    churn_per_s: float  # arrivals + departures


class LoadTracker:
    """Turns the workers' reports into weights, correcting for what the reports cannot show yet.

    Workers report on their own ticks, so some counts are always fresher than others; in a burst, the worker
    that reported last looks busiest and the others idle. The tracker compares the slots at one common instant
    (the oldest of the latest reports, interpolating the fresher ones back to it), adds the arrivals each slot
    should have received since then under the programs in force (a Smith predictor), and sizes the lookahead to
    the churn, so the loop neither overshoots in a burst nor dawdles when the load is calm. A drop in a slot's
    load counts once it has lasted a moment, so a mass disconnect reported unevenly does not skew the weights.
    """

    def __init__(self, costs: Costs | None = None, *, floor_fraction: float = FLOOR_FRACTION) -> None:
        self.costs = costs or Costs()
        self.floor_fraction = floor_fraction
        self._history: list[collections.deque[tuple[float, float]]] = []  # per slot: (report time, load)
        self._programs: collections.deque[tuple[float, list[int]]] = collections.deque()  # (attached at, weights)
        self._reference: tuple[float, dict[int, float]] | None = None  # (common instant, loads then)
        self._arrivals = (0.0, 0.0)  # (connections per second, measured at), fading with RATE_DECAY_S
        self._churn = (0.0, 0.0)  # arrivals + departures
        # Per slot: (report time, connections accepted so far, accept rate over the last report interval).
        self._opened: list[tuple[float, int, float] | None] = []
        # Per slot: the last accept-queue length seen, and when it last went down (the worker is accepting).
        self._queue: list[tuple[int, float]] = []

    def observe(self, now: float, loads: Sequence[SlotLoad]) -> None:
        """Record each slot's latest report; call it on every report, the history is what makes slots comparable."""
        if len(self._history) != len(loads):
            self._history = [collections.deque(maxlen=HISTORY) for _ in loads]
            self._opened = [None] * len(loads)
            self._queue = [(0, 0.0)] * len(loads)
            self._reference = None
        self._observe_openings(now, loads)
        for load in loads:
            queued, drained_at = self._queue[load.slot]
            self._queue[load.slot] = (load.accept_queue, now if load.accept_queue < queued else drained_at)
        for load in loads:
            history = self._history[load.slot]
            if not load.eligible:
                history.clear()  # the next worker on this slot starts a history of its own
                continue
            at, value = now - load.report_age, self.costs.reported(load)
            if history and at <= history[-1][0] + SAME_REPORT_S:
                continue
            if history:
                self._surprise(load.slot, now, history[-1], (at, value), len(loads))
            history.append((at, value))

    def _observe_openings(self, now: float, loads: Sequence[SlotLoad]) -> None:
        # Short-lived connections (an HTTP client that opens one per request) come and go between two reports:
        # the live counts stay flat and show no churn, and the loop would chase one-connection differences with
        # a tiny lookahead, swinging every new connection to one worker. The workers' count of accepted
        # connections is the true arrival rate; with it the lookahead covers what arrives before the next update.
        for load in loads:
            at = now - load.report_age
            previous = self._opened[load.slot]
            if not load.eligible:
                self._opened[load.slot] = None  # no worker taking connections: no rate, not a stale one
                continue
            if previous is None or load.opened < previous[1]:  # a new worker on the slot counts from zero
                self._opened[load.slot] = (at, load.opened, 0.0)
            elif at > previous[0] + SAME_REPORT_S:
                self._opened[load.slot] = (at, load.opened, (load.opened - previous[1]) / (at - previous[0]))
        rate = sum(entry[2] for entry in self._opened if entry is not None)
        if rate > 0:
            self._raise(now, rate, 2 * rate)  # in a steady state as many leave as arrive

    def attached(self, now: float, weights: Sequence[int]) -> None:
        self._programs.append((now, list(weights)))
        while len(self._programs) > 1 and self._programs[1][0] < now - MAX_PREDICTION_S:
            self._programs.popleft()

    def stalled(self, now: float, loads: Sequence[SlotLoad]) -> list[int]:
        """Eligible slots whose worker went silent while its peers did not: its event loop is blocked."""
        stalled = []
        for load in loads:
            if not load.eligible or load.report_age < STALL_S:
                continue
            # Peers: every other slot with a worker (report_age 0 means none), eligible or not: a worker the
            # supervisor already left out for silence still says how late reports are running.
            peers = [other.report_age for other in loads if other.slot != load.slot and other.report_age > 0]
            late = load.report_age - (statistics.median(peers) if peers else 0.0)
            busy = min(BUSY_MAX_S, (self._taken(load.slot, now) + load.accept_queue) * BUSY_PER_CONNECTION_S)
            # A worker whose queue went down since its last report is accepting: its reports are late because the
            # machine is saturated (seen on 2 busy cores), not because its loop is stuck.
            accepting = slot_queue_drained_since(self._queue, load.slot, now - load.report_age)
            if late >= STALL_EMPTY_S or (late >= STALL_S + busy and load.accept_queue > 0 and not accepting):
                stalled.append(load.slot)
        return stalled

    def plan(self, now: float, loads: Sequence[SlotLoad], *, returning: float | None = None) -> Plan:
        """The weights for ``loads`` (already passed to ``observe``).

        ``returning`` is load outside the slots that will reconnect (a reload's draining workers): with it, the fair
        share is the whole instance's load per slot, see ``weights_for``'s ``min_fair_share``.
        """
        ordered = validated(loads)
        stalled = self.stalled(now, ordered)
        live = [load.slot for load in ordered if load.eligible and load.slot not in stalled]
        live = [slot for slot in live if self._history[slot]]
        estimates: list[float | None] = [None] * len(ordered)
        lookahead = LOOKAHEAD
        if live:
            common = min(self._history[slot][-1][0] for slot in live)
            then = {slot: self._held(slot, common) for slot in live}
            self._measure(common, then)
            arrivals, churn = self._rate(self._arrivals, now), self._rate(self._churn, now)
            for slot in live:
                # Connections that arrived since the common instant are in no comparable count; those still
                # queued are in the kernel's figure. Expect the larger, so a queued one is not counted twice.
                expected = arrivals * self._exposure(slot, common, now, len(ordered))
                queued = ordered[slot].accept_queue * self.costs.accept_queue
                estimates[slot] = then[slot] + max(queued, expected)
            horizon = HORIZON_S + min(now - common, MAX_PREDICTION_S)
            # Keep-alive HTTP connections come in bursts (a client pool reconnecting at once) long after the last
            # update: weights built from small differences between busy workers ([28, 36] gave 98%/2%) would send
            # a whole burst to one worker. Twice the mean HTTP count per slot keeps them moderate (56%/44%).
            # WebSockets are unaffected: they are what the tight correction is for.
            http_mean = sum(ordered[slot].http for slot in live) / len(live)
            lookahead = max(LOOKAHEAD, LOOKAHEAD_SAFETY * churn * horizon / len(live), HTTP_LOOKAHEAD * http_mean)
        min_fair_share = 0.0
        if returning is not None and ordered:
            min_fair_share = (sum(self.costs.total(load) for load in ordered) + returning) / len(ordered)
        weights = weights_for(
            estimates, lookahead=lookahead, floor_fraction=self.floor_fraction, min_fair_share=min_fair_share
        )
        return Plan(
            weights, estimates, stalled, lookahead, self._rate(self._arrivals, now), self._rate(self._churn, now)
        )

    def _held(self, slot: int, instant: float) -> float:
        """The slot's load at ``instant``, where a recent drop counts only once it has lasted HOLD_S.

        When many clients close at once, each worker reports its drop when its loop gets to it: for a moment
        some look empty and others full, and a burst arriving then would pile onto the early ones. Truly gone
        connections only delay the refill of their slot by HOLD_S; arrivals are seen at once.
        """
        history = self._history[slot]
        recent = [value for at, value in history if instant - HOLD_S <= at <= instant]
        return max([_at(history, instant), *recent])

    def _taken(self, slot: int, now: float) -> float:
        """Connections ``slot``'s reports show it took in the last BUSY_WINDOW_S."""
        history = self._history[slot] if slot < len(self._history) else None
        if not history:
            return 0.0
        return max(0.0, history[-1][1] - _at(history, now - BUSY_WINDOW_S))

    def _measure(self, common: float, then: dict[int, float]) -> None:
        # The steady rates: every live slot's change between two common instants.
        if self._reference is None:
            self._reference = (common, then)
            return
        before_at, before = self._reference
        elapsed = common - before_at
        if elapsed < RATE_WINDOW_S:
            return
        changes = [then[slot] - before[slot] for slot in then if slot in before]
        arrived = sum(change for change in changes if change > 0)
        departed = -sum(change for change in changes if change < 0)
        self._raise(common, arrived / elapsed, (arrived + departed) / elapsed)
        self._reference = (common, then)

    def _surprise(
        self, slot: int, now: float, before: tuple[float, float], after: tuple[float, float], slots: int
    ) -> None:
        # One slot's new report, judged alone: a change the current churn cannot explain is the start of a burst
        # or of a mass disconnect, seen here up to a report tick before a common instant can show it.
        elapsed = after[0] - before[0]
        change = after[1] - before[1]
        if elapsed <= 0:
            return
        expected = self._rate(self._churn, now) * elapsed / slots
        if abs(change) < SURPRISE_MIN + expected + SURPRISE_SIGMAS * math.sqrt(expected):
            return
        # Arrivals follow the weights (at least half a fair share, so a floor weight cannot blow the rate up);
        # departures do not, so one slot's are taken as every slot's.
        exposure = max(self._exposure(slot, before[0], after[0], slots), elapsed / slots / 2)
        arrivals = max(change, 0.0) / exposure
        self._raise(now, arrivals, arrivals + max(-change, 0.0) * slots / elapsed)

    def _raise(self, now: float, arrivals: float, churn: float) -> None:
        # Attack at once (a burst must widen the lookahead before the next update), release slowly.
        self._arrivals = (max(arrivals, self._rate(self._arrivals, now)), now)
        self._churn = (max(churn, self._rate(self._churn, now)), now)

    @staticmethod
    def _rate(rate: tuple[float, float], now: float) -> float:
        value, measured_at = rate
        return value * math.exp(-max(0.0, now - measured_at) / RATE_DECAY_S)

    def _exposure(self, slot: int, start: float, end: float, slots: int) -> float:
        """Seconds x share of new connections that the programs in force gave ``slot`` between the two times."""
        start = max(start, end - MAX_PREDICTION_S)
        programs = list(self._programs)
        if not programs:
            return max(0.0, end - start) / slots
        exposure = 0.0
        for index, (attached, weights) in enumerate(programs):
            begin = attached if index else min(attached, start)  # before the first program: assume the first
            until = programs[index + 1][0] if index + 1 < len(programs) else end
            overlap = min(until, end) - max(begin, start)
            total = sum(weights)
            if overlap > 0 and len(weights) == slots and total > 0:
                exposure += overlap * weights[slot] / total
        return exposure


def _at(history: Sequence[tuple[float, float]], instant: float) -> float:
    # The load at `instant`, interpolated between the reports around it (flat before the first, after the last).
    if instant <= history[0][0]:
        return history[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(history):
        if t0 <= instant <= t1:
            return v0 + (v1 - v0) * (instant - t0) / (t1 - t0) if t1 > t0 else v1
    return history[-1][1]


def slot_queue_drained_since(queues: Sequence[tuple[int, float]], slot: int, instant: float) -> bool:
    return slot < len(queues) and queues[slot][1] > instant

"""The steering policy: turn each slot's live load into the weights of the BPF program. Pure, no I/O.

Weights are smooth (each eligible slot's deficit against its fair share, plus a floor), never "everything to
the least-loaded worker": every connection that arrives until the next program (2 ms in a burst, up to 100 ms
otherwise) follows the same weights, so winner-takes-all would hand a whole batch to one process.
``load_tracker.LoadTracker`` sizes that smoothing to the measured arrival rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Every connection the kernel placed on a slot counts as one, whatever stage it is in (queued, HTTP, upgraded to a
# WebSocket): during a burst most new WebSockets sit in the HTTP stage for a while (a trace of 400 at once caught
# one worker with 163 of them), and when they counted for less the busiest worker looked the least loaded and drew
# more of the burst. Equal weight also means a connection moving from one stage to the next is neither an arrival
# nor a departure. A request in flight is work on top of its connection. Kept small: WebSocket app tasks that
# outlive their connection for a moment are reported as in flight too, and a transient must not starve a slot.
IN_FLIGHT_COST = 0.25
# Connections each eligible slot is expected to receive before the next update, at least. The fair share is
# computed as if they had already arrived, which caps the gain of the feedback loop: with deficit weights, an
# imbalance shrinks by a factor (1 - arrivals / lookahead) per update, so a lookahead below the real arrivals
# overshoots, and one below half of them oscillates and grows (measured with a fixed lookahead of 4 and 400
# clients in 0.1 s: max/min 1.8-42). LoadTracker raises it with the measured arrival rate; this is the idle value.
LOOKAHEAD = 4.0
# The share of the total weight spread evenly over the eligible slots whatever their load, so no eligible worker
# ever starves. Small, because it leaks: a slot already at its share still takes its floor of every batch. At 4%
# a rolling reload of 400 WebSockets ended at max/min 1.08-1.13 (the slots replaced first kept taking 1-2% of
# each later slot's reconnecting clients); at 1%, 1.03-1.04. The counts steering reads are exact and current
# (ipc.counters), so the floor no longer has to make up for stale ones.
FLOOR_FRACTION = 0.01
TOTAL_WEIGHT = 10_000
MAX_TOTAL_WEIGHT = 2**31  # the BPF program computes `random % total` with a u32 constant


@dataclass(frozen=True, slots=True)
class SlotLoad:
    """What the supervisor last saw of one slot: its worker's counts and its listener's accept queue."""

    slot: int
    # False for slots that are starting, draining, crashed, stalled or (during a reload) not yet replaced; the
    # caller decides, the policy only honours it (steering adds a quicker stall check from report_age).
    eligible: bool
    websocket: int  # live WebSocket connections
    http: int  # live HTTP keep-alive connections
    in_flight: int  # HTTP requests in progress
    accept_queue: int = 0  # connections waiting in the slot's accept queue (tcp_info.accept_queue)
    report_age: float = 0.0  # seconds since the worker's last report (0 if unknown)
    # TCP connections the worker accepted since it started, read now from the memory it shares (ipc.counters);
    # None where there is no worker.
    accepted_now: int | None = None
    live_now: int | None = None  # TCP connections the worker holds now (HTTP or WebSocket), from the same page


def connections(load: SlotLoad) -> float:
    """The slot's connections now: its worker's shared count if it has one, else its last report's; plus its queue."""
    if load.live_now is not None:
        return load.live_now + load.accept_queue
    return load.websocket + load.http + load.accept_queue


def estimated_load(load: SlotLoad) -> float:
    """What steering balances: the slot's connections, and a little for each request in flight."""
    return connections(load) + load.in_flight * IN_FLIGHT_COST


def compute_weights(
    loads: Sequence[SlotLoad],
    *,
    total_weight: int = TOTAL_WEIGHT,
    lookahead: float = LOOKAHEAD,
    floor_fraction: float = FLOOR_FRACTION,
) -> list[int]:
    """Return one integer weight per slot, in slot order, summing to ``total_weight``.

    Ineligible slots get 0 (all slots do if none is eligible). Each eligible slot gets ``floor_fraction /
    eligible`` of the total, and the rest is shared in proportion to how far the slot's ``estimated_load`` is
    below the fair share. Equal loads get equal weights (to within the 1 unit that integer rounding needs), and
    more load never gets more weight.
    """
    estimates = [estimated_load(load) if load.eligible else None for load in validated(loads)]
    return weights_for(estimates, lookahead=lookahead, floor_fraction=floor_fraction, total_weight=total_weight)


def weights_for(
    estimates: Sequence[float | None],
    *,
    lookahead: float = LOOKAHEAD,
    floor_fraction: float = FLOOR_FRACTION,
    total_weight: int = TOTAL_WEIGHT,
    min_fair_share: float = 0.0,
) -> list[int]:
    """Weights from each slot's estimated load (``None``: not eligible), as ``compute_weights`` describes.

    ``min_fair_share`` raises the fair share when load that ineligible slots hold now will come back to the eligible
    ones (during a reload, the clients of workers not yet replaced): each eligible slot is then filled towards the
    share it will have in the end, not towards the average of the few slots eligible so far.
    """
    _check_knobs(total_weight, lookahead, floor_fraction)
    eligible = [(slot, cost) for slot, cost in enumerate(estimates) if cost is not None]
    weights = [0] * len(estimates)
    if not eligible:
        return weights
    if total_weight < len(eligible):
        raise ValueError(f"total_weight {total_weight} is too small for {len(eligible)} eligible slots")
    costs = [cost for _, cost in eligible]
    average = sum(costs) / len(eligible)
    if min_fair_share > average:
        # Load is coming back (a reload's reconnecting clients): fill each slot towards the share it will have in
        # the end, with no lookahead on top, or every slot already at that share would take part of each batch (a
        # reload of 400 WebSockets ended 104/104/101/91 that way: the last slot's clients leaked to the others).
        fair_share = min_fair_share
    else:
        # The fair share counts the connections expected before the next update as if they had arrived; the
        # deficits then add up to at least that allowance and spread a burst over every slot below the fair share.
        fair_share = average + lookahead
    deficits = [max(fair_share - cost, 0.0) for cost in costs]
    if sum(deficits) <= 1e-9:
        deficits = [1.0] * len(eligible)  # equal loads and no look-ahead: nobody is behind, share evenly

    floor_units = math.floor(total_weight * floor_fraction / len(eligible))
    if floor_fraction > 0:
        floor_units = max(floor_units, 1)  # a floor that rounds to 0 would starve a slot on small totals
    shared = _apportion(total_weight - floor_units * len(eligible), deficits)
    for (slot, _), share in zip(eligible, shared, strict=True):
        weights[slot] = floor_units + share
    return weights


def least_loaded_weights(counts: Sequence[float | None], *, total_weight: int = TOTAL_WEIGHT) -> list[int]:
    """Everything to the eligible slots with the fewest connections, split evenly among ties (``None``: not eligible).

    For arrivals sparse enough that the program is re-planned between two of them: each new connection then goes
    to a least-loaded slot, deterministically, instead of being a weighted random draw.
    """
    eligible = [count for count in counts if count is not None]
    weights = [0] * len(counts)
    if not eligible:
        return weights
    lowest = min(eligible)
    winners = [slot for slot, count in enumerate(counts) if count is not None and count <= lowest]
    for slot, share in zip(winners, _apportion(total_weight, [1.0] * len(winners)), strict=True):
        weights[slot] = share
    return weights


def spread(counts: Sequence[int]) -> float:
    """Return max/min of ``counts``: 1.0 is perfect balance, inf if some count is 0 while another is not."""
    if not counts:
        raise ValueError("spread() of no counts")
    if min(counts) < 0:
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    low, high = min(counts), max(counts)
    if high == 0:
        return 1.0
    if low == 0:
        return math.inf
    return high / low


def _apportion(units: int, shares: Sequence[float]) -> list[int]:
    # Largest-remainder rounding: the parts sum to exactly `units`, a share of 0 gets exactly 0, and a larger
    # share never gets fewer units than a smaller one (ties go to the lower slot).
    total = sum(shares)
    exact = [units * share / total for share in shares]
    parts = [math.floor(value) for value in exact]
    left = units - sum(parts)
    by_remainder = sorted(range(len(exact)), key=lambda i: (parts[i] - exact[i], i))
    for index in by_remainder[: max(left, 0)]:
        parts[index] += 1
    return parts


def validated(loads: Sequence[SlotLoad]) -> list[SlotLoad]:
    """``loads`` in slot order; raises ``ValueError`` unless they cover slots 0..n-1 once each, non-negative."""
    ordered = sorted(loads, key=lambda load: load.slot)
    slots = [load.slot for load in ordered]
    if slots != list(range(len(ordered))):
        raise ValueError(f"loads must cover slots 0..{len(ordered) - 1} once each, got slots {slots}")
    for load in ordered:
        if min(load.websocket, load.http, load.in_flight, load.accept_queue) < 0 or not load.report_age >= 0:
            raise ValueError(f"slot {load.slot} has a negative count or age: {load}")
    return ordered


def _check_knobs(total_weight: int, lookahead: float, floor_fraction: float) -> None:
    if not 1 <= total_weight <= MAX_TOTAL_WEIGHT:
        raise ValueError(f"total_weight must be in 1..2**31, got {total_weight}")
    if not lookahead >= 0:  # `not >=` also rejects NaN
        raise ValueError(f"lookahead must be >= 0, got {lookahead}")
    if not 0 <= floor_fraction <= 1:
        raise ValueError(f"floor_fraction must be in [0, 1], got {floor_fraction}")

"""The steering policy: turn each slot's live load into the weights of the BPF program. Pure, no I/O.

Weights are smooth (each eligible slot's deficit against its fair share, plus a floor), never "everything to
the least-loaded worker": the program is only replaced every 100-250 ms, and every connection that arrives in
between follows the same weights, so winner-takes-all would hand a whole burst to one process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# What one unit of each kind of load costs a worker, relative to a WebSocket.
# A WebSocket is long-lived: it stays on its worker for minutes or hours and receives every broadcast on its
# channels, so it is the load that placement cannot undo later.
WEBSOCKET_COST = 1.0
# An idle keep-alive HTTP connection costs a file descriptor and a timer; it closes at the keep-alive timeout
# and the client's next connection is placed afresh, so a misplacement is short-lived.
HTTP_COST = 0.25
# A request in flight is work the worker's event loop is doing right now, on top of its connection.
IN_FLIGHT_COST = 0.5
# A connection in the accept queue is already committed to this slot (the kernel picked it) but not yet
# counted by the worker, and a growing queue is the first sign of a worker that is not keeping up: count it
# in full, like a WebSocket.
ACCEPT_QUEUE_COST = 1.0
# Connections (in load units) each eligible slot is expected to receive before the next update. The fair
# share is computed as if they had already arrived, so the deficits a burst fills are spread over several
# slots instead of pointing only at the single least-loaded one. Too small and the weights overshoot and
# oscillate (2 per slot: batches of 25 over 4 slots end at max/min ~1.06-1.11); too large and an imbalance is
# corrected slowly. A caller that measures its arrival rate can pass rate * interval / slots instead.
LOOKAHEAD = 4.0
# The share of the total weight spread evenly over the eligible slots whatever their load: no eligible worker
# ever starves, and counts that went stale (a worker that stopped reporting) cannot freeze the choice. The
# floor is also a leak while one slot catches up: 4% (1% per slot with 4 workers) still sends 97% of the
# clients that reconnect after a crash to the empty replacement, which then ends within ~4 of its fair share.
FLOOR_FRACTION = 0.04
TOTAL_WEIGHT = 10_000
MAX_TOTAL_WEIGHT = 2**31  # the BPF program computes `random % total` with a u32 constant


@dataclass(frozen=True, slots=True)
class SlotLoad:
    """What the supervisor last saw of one slot: its worker's counts and its listener's accept queue."""

    slot: int
    # False for slots that are starting, draining, crashed, stalled or (during a reload) not yet replaced; the
    # caller decides, the policy only honours it.
    eligible: bool
    websocket: int  # live WebSocket connections
    http: int  # live HTTP keep-alive connections
    in_flight: int  # HTTP requests in progress
    accept_queue: int = 0  # connections waiting in the slot's accept queue (tcp_info.accept_queue)


def compute_weights(
    loads: Sequence[SlotLoad],
    *,
    total_weight: int = TOTAL_WEIGHT,
    websocket_cost: float = WEBSOCKET_COST,
    http_cost: float = HTTP_COST,
    in_flight_cost: float = IN_FLIGHT_COST,
    accept_queue_cost: float = ACCEPT_QUEUE_COST,
    lookahead: float = LOOKAHEAD,
    floor_fraction: float = FLOOR_FRACTION,
) -> list[int]:
    """Return one integer weight per slot, in slot order, summing to ``total_weight``.

    Ineligible slots get 0 (all slots do if none is eligible). Each eligible slot gets ``floor_fraction /
    eligible`` of the total, and the rest is shared in proportion to how far the slot is below the fair share.
    Equal loads get equal weights (to within the 1 unit that integer rounding needs), and more load never gets
    more weight.
    """
    ordered = _validated(loads)
    _check_knobs(
        total_weight,
        (websocket_cost, http_cost, in_flight_cost, accept_queue_cost),
        lookahead,
        floor_fraction,
    )
    eligible = [load for load in ordered if load.eligible]
    weights = [0] * len(ordered)
    if not eligible:
        return weights
    if total_weight < len(eligible):
        raise ValueError(f"total_weight {total_weight} is too small for {len(eligible)} eligible slots")

    costs = [
        load.websocket * websocket_cost
        + load.http * http_cost
        + load.in_flight * in_flight_cost
        + load.accept_queue * accept_queue_cost
        for load in eligible
    ]
    # The fair share counts the connections expected before the next update as if they had arrived; the
    # deficits then add up to at least that allowance and spread a burst over every slot that is below the
    # fair share.
    fair_share = (sum(costs) + lookahead * len(eligible)) / len(eligible)
    deficits = [max(fair_share - cost, 0.0) for cost in costs]
    if sum(deficits) <= 1e-9:
        deficits = [1.0] * len(eligible)  # equal loads and no look-ahead: nobody is behind, share evenly

    floor_units = math.floor(total_weight * floor_fraction / len(eligible))
    if floor_fraction > 0:
        floor_units = max(floor_units, 1)  # a floor that rounds to 0 would starve a slot on small totals
    shared = _apportion(total_weight - floor_units * len(eligible), deficits)
    for load, share in zip(eligible, shared, strict=True):
        weights[load.slot] = floor_units + share
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


def _validated(loads: Sequence[SlotLoad]) -> list[SlotLoad]:
    ordered = sorted(loads, key=lambda load: load.slot)
    slots = [load.slot for load in ordered]
    if slots != list(range(len(ordered))):
        raise ValueError(f"loads must cover slots 0..{len(ordered) - 1} once each, got slots {slots}")
    for load in ordered:
        if min(load.websocket, load.http, load.in_flight, load.accept_queue) < 0:
            raise ValueError(f"slot {load.slot} has a negative count: {load}")
    return ordered


def _check_knobs(total_weight: int, costs: Sequence[float], lookahead: float, floor_fraction: float) -> None:
    if not 1 <= total_weight <= MAX_TOTAL_WEIGHT:
        raise ValueError(f"total_weight must be in 1..2**31, got {total_weight}")
    if any(not cost >= 0 for cost in costs):  # `not >=` also rejects NaN
        raise ValueError(f"load costs must be >= 0, got {list(costs)}")
    if not lookahead >= 0:
        raise ValueError(f"lookahead must be >= 0, got {lookahead}")
    if not 0 <= floor_fraction <= 1:
        raise ValueError(f"floor_fraction must be in [0, 1], got {floor_fraction}")

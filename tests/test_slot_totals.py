"""Per-slot totals: a worker's counters are kept when it is gone, and its late final report still counts."""

from __future__ import annotations

from ipc.messages import Report
from supervisor.process.slot_totals import SlotTotals


def report(generation: int, requests: int, published: int = 0, slot: int = 0) -> Report:
    return Report(
        pid=1_000_000 + generation, slot=slot, generation=generation, seq=1, http=0, websocket=0, in_flight=0,
        requests=requests, websocket_sessions=0, loop_lag_ms=0.0, draining=False, dropped_reports=0,
        bus={"published": published, "members": 3},
    )  # fmt: skip


def test_totals_never_go_back_across_replacements() -> None:
    totals = SlotTotals()
    totals.observe(report(1, 10, published=2), known=True)
    totals.observe(report(2, 5, slot=1), known=True)
    assert totals.totals()[0]["requests"] == 10
    totals.sample([], [])  # both workers are gone: folded into their slots
    totals.observe(report(3, 1), known=True)  # slot 0's replacement starts from zero
    assert totals.totals()[0]["requests"] == 11 and totals.totals()[1]["requests"] == 5
    totals.observe(report(1, 12, published=3), known=False)  # generation 1's final report, after it was folded
    assert totals.totals()[0]["requests"] == 13 and totals.totals()[0]["bus.published"] == 3
    assert "bus.members" not in totals.totals()[0]  # a gauge, not a total
    totals.observe(report(1, 4), known=False)  # lower than what was seen: never subtracted
    totals.observe(report(99, 50), known=False)  # a generation never seen: not counted
    assert totals.totals()[0]["requests"] == 13

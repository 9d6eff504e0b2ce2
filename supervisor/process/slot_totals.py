"""Per-slot running totals that never go backwards when a slot's worker is replaced (supervisor process).

A worker's counters (requests, WebSocket sessions, accepted connections, CPU seconds, bus messages) start at zero in
each new process. Prometheus counters must not: a scrape across a reload would see a reset. The supervisor keeps
each live worker's last values by generation (unique in an instance) and, once that worker is gone, adds them to
its slot's retired total. A slot's total is its retired total plus the values of its live workers (the serving
one, a replacement starting beside it, and the old one draining). A worker's final report may arrive after it is
gone: the difference is then added to the retired total, so nothing it counted is lost.
"""

from __future__ import annotations

import collections
from collections import Counter
from collections.abc import Iterable, Mapping

import psutil

from ipc.messages import Report
from supervisor.process.slots import Slot, WorkerHandle

_RETIRED_MEMORY = 256  # recently gone workers whose late final report is still accepted


class _Live:
    __slots__ = ("slot", "values", "process", "rss")

    def __init__(self, slot: int, pid: int) -> None:
        self.slot = slot
        self.rss = 0  # resident memory at the last sample (a gauge, not a total)
        self.values: Counter[str] = Counter()
        try:
            self.process: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.process = None


def report_values(report: Report) -> dict[str, float]:
    """The monotonic counters of one report (bus gauges such as ``channels`` and ``members`` are left out)."""
    values: dict[str, float] = {"requests": report.requests, "websocket_sessions": report.websocket_sessions}
    for key, value in report.bus.items():
        if key not in ("channels", "members"):
            values[f"bus.{key}"] = value
    for code, count in report.closes.items():
        if code.isdigit() and len(code) == 4:  # a metric label: only what a close code looks like
            values[f"closes.{code}"] = count
    return values


class SlotTotals:
    def __init__(self) -> None:
        self._live: dict[int, _Live] = {}  # generation -> its worker's last values
        self._gone: collections.OrderedDict[int, _Live] = collections.OrderedDict()
        self._retired: dict[int, Counter[str]] = {}  # slot -> totals of its workers that are gone
        self._slots: dict[int, tuple[Slot, Counter[str]]] = {}  # slot index -> (slot object, restarts before it)

    def observe(self, report: Report, known: bool) -> None:
        """A report arrived; ``known`` says it comes from a worker of the fleet (checked by pid, slot, generation)."""
        record = self._live.get(report.generation)
        if record is None and known:
            record = self._live[report.generation] = _Live(report.slot, report.pid)
        if record is not None:
            record.values.update(_raised(record.values, report_values(report)))
            return
        late = self._gone.get(report.generation)
        if late is not None and late.slot == report.slot:  # the final report of a worker already folded
            delta = _raised(late.values, report_values(report))
            late.values.update(delta)
            self._retired.setdefault(late.slot, Counter()).update(delta)

    def sample(self, workers: Iterable[WorkerHandle], slots: Iterable[Slot]) -> None:
        """Refresh what only the supervisor can read (CPU time, accepted connections); fold the workers gone."""
        seen = set()
        for worker in workers:
            generation = worker.generation
            seen.add(generation)
            record = self._live.get(generation)
            if record is None:
                record = self._live[generation] = _Live(worker.slot, worker.pid)
            fresh: dict[str, float] = {}
            if worker.counters is not None:
                fresh["accepted"] = worker.counters.read().accepted
            if record.process is not None and not worker.exited.done():
                try:
                    times = record.process.cpu_times()
                    fresh["cpu_seconds"] = times.user + times.system
                    record.rss = record.process.memory_info().rss
                except psutil.Error:
                    pass
            record.values.update(_raised(record.values, fresh))
        for generation in [g for g in self._live if g not in seen]:
            record = self._live.pop(generation)
            self._retired.setdefault(record.slot, Counter()).update(record.values)
            record.process = None
            self._gone[generation] = record
            while len(self._gone) > _RETIRED_MEMORY:
                self._gone.popitem(last=False)
        for slot in slots:
            known = self._slots.get(slot.index)
            if known is not None and known[0] is not slot:  # a slot removed by a scale-down and added again
                self._slots[slot.index] = (slot, known[1] + known[0].replacements)
            elif known is None:
                self._slots[slot.index] = (slot, Counter())

    def totals(self) -> dict[int, Counter[str]]:
        """slot -> every counter summed over the slot's workers, past and present."""
        result = {slot: Counter(values) for slot, values in self._retired.items()}
        for record in self._live.values():
            result.setdefault(record.slot, Counter()).update(record.values)
        return result

    def rss(self) -> dict[int, int]:
        """slot -> resident memory of its live workers at the last sample."""
        result: dict[int, int] = {}
        for record in self._live.values():
            result[record.slot] = result.get(record.slot, 0) + record.rss
        return result

    def replacements(self) -> dict[int, Counter[str]]:
        """slot -> replacements by reason (``Slot.replacements``), kept across a slot's removal and re-creation."""
        return {index: before + slot.replacements for index, (slot, before) in self._slots.items()}


def _raised(old: Mapping[str, float], new: Mapping[str, float]) -> dict[str, float]:
    """How much each of ``new``'s values rose over ``old``: a value never decreases (a bad report cannot undo)."""
    return {key: value - old.get(key, 0) for key, value in new.items() if value > old.get(key, 0)}

"""Which worker to recycle, and why: pure functions over samples of the live workers (run by the supervisor's
recycler, ``supervisor.process.recycler``; no processes, no clock of their own).

Each worker gets its own limits when it is first seen (the jitter is drawn then), so workers started together do
not all reach ``--max-requests`` in the same second. When several workers are past a limit, the one furthest past
it goes first; only one is recycled at a time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

MAX_REQUESTS = "max-requests"
MAX_LIFETIME = "max-lifetime"
MAX_MEMORY = "max-memory"
REASONS = (MAX_REQUESTS, MAX_LIFETIME, MAX_MEMORY)


@dataclass(frozen=True, slots=True)
class Limits:
    """The instance's recycling settings (0: that limit is off)."""

    max_requests: int = 0
    max_requests_jitter: int = 0
    max_lifetime: float = 0.0
    max_lifetime_jitter: float = 0.0
    max_memory: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.max_requests or self.max_lifetime or self.max_memory)

    def for_worker(self, rng: random.Random) -> WorkerLimits:
        """One worker's limits: the jitter is drawn once, uniformly in ``[0, jitter]``."""
        requests = self.max_requests + rng.randint(0, self.max_requests_jitter) if self.max_requests else None
        lifetime = self.max_lifetime + rng.uniform(0, self.max_lifetime_jitter) if self.max_lifetime else None
        return WorkerLimits(requests, lifetime, self.max_memory or None)


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    requests: int | None
    lifetime: float | None  # seconds since the worker started
    memory: int | None  # bytes

    def describe(self) -> dict[str, float | int | None]:
        lifetime = round(self.lifetime, 1) if self.lifetime is not None else None
        return {"requests": self.requests, "lifetime_s": lifetime, "memory_bytes": self.memory}


@dataclass(frozen=True, slots=True)
class Sample:
    """One serving worker as the recycler saw it."""

    slot: int
    pid: int
    age: float  # seconds since it started
    requests: int  # HTTP responses it completed (its last report)
    memory: int  # bytes (RSS); 0 when not measured


@dataclass(frozen=True, slots=True)
class Due:
    slot: int
    pid: int
    reason: str
    overshoot: float  # value / limit (>= 1): how far past its limit the worker is

    def describe(self, limits: WorkerLimits, sample: Sample) -> str:
        if self.reason == MAX_MEMORY:
            return f"RSS {sample.memory >> 20} MiB >= --max-memory {(limits.memory or 0) >> 20} MiB"
        if self.reason == MAX_REQUESTS:
            return f"{sample.requests} requests >= {limits.requests}"
        return f"{sample.age:.0f}s old >= {limits.lifetime or 0:.0f}s"


def overdue(sample: Sample, limits: WorkerLimits) -> Due | None:
    """The limit ``sample`` is furthest past (memory first on a tie: it is the one that hurts), or None."""
    found: list[Due] = []
    if limits.memory and sample.memory >= limits.memory:
        found.append(Due(sample.slot, sample.pid, MAX_MEMORY, sample.memory / limits.memory))
    if limits.requests and sample.requests >= limits.requests:
        found.append(Due(sample.slot, sample.pid, MAX_REQUESTS, sample.requests / limits.requests))
    if limits.lifetime and sample.age >= limits.lifetime:
        found.append(Due(sample.slot, sample.pid, MAX_LIFETIME, sample.age / limits.lifetime))
    return max(found, key=lambda due: due.overshoot, default=None)


def born_over(first_memory: int, limits: WorkerLimits) -> bool:
    """A worker already over ``--max-memory`` at its first sample after it became ready: a replacement would be
    too, so recycling it would loop. It is reported instead."""
    return bool(limits.memory) and first_memory >= (limits.memory or 0)


def choose(candidates: Iterable[tuple[Sample, WorkerLimits]], held: set[int]) -> Due | None:
    """The worker to recycle now, if any: the one furthest past a limit, skipping the ``held`` pids."""
    return next(iter(in_line(candidates, held)), None)


def in_line(candidates: Iterable[tuple[Sample, WorkerLimits]], held: set[int]) -> list[Due]:
    """Every worker past a limit, skipping the ``held`` pids, furthest past first: the order they are recycled in."""
    due = (overdue(sample, limits) for sample, limits in candidates if sample.pid not in held)
    return sorted((d for d in due if d is not None), key=lambda d: d.overshoot, reverse=True)


def retry_delay(failures: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before a slot whose recycle failed (its replacement did not start) is tried again."""
    return float(min(base * 2 ** max(0, failures - 1), cap)) if failures > 0 else 0.0

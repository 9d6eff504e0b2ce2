"""Which worker to recycle, and why: pure functions over samples of the live workers (run by the supervisor's
recycler, ``supervisor.process.recycler``; no processes, no clock of their own).

Each worker gets its own limits when it is first seen (the jitter is drawn then), so workers started together do
not all reach ``--max-requests`` in the same second.

``--max-memory`` is forecast, not only checked: workers of a leaking app grow together, recycles go one (or
``--recycle-concurrency``) at a time, and each takes seconds, so a worker that waits its turn keeps growing. Each
worker's sustained RSS growth rate (``sustained_rate``) and the measured duration of recent recycles
(``RecycleDuration``) give each growing worker its place in a line, soonest forecast crossing first; a worker is
due once its forecast RSS at the end of its turn reaches the limit, and every worker ahead of it is due with it
(``plan``). Workers past a memory limit go first, then those past ``--max-requests``/``--max-lifetime``, the one
furthest past first.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
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
    growth: float | None = None  # bytes/s of sustained RSS growth (``sustained_rate``); None: none seen
    first_memory: int = 0  # bytes at its first sample once ready (0: not known)


@dataclass(frozen=True, slots=True)
class Due:
    slot: int
    pid: int
    reason: str
    overshoot: float  # value / limit: how far past its limit the worker is (< 1: recycled early, by forecast)
    note: str = ""  # why, with the numbers (for the log)


def overdue(sample: Sample, limits: WorkerLimits) -> Due | None:
    """The limit ``sample`` is furthest past (memory first on a tie: it is the one that hurts), or None."""
    found: list[Due] = []
    if limits.memory and sample.memory >= limits.memory:
        note = f"RSS {sample.memory >> 20} MiB >= --max-memory {limits.memory >> 20} MiB"
        found.append(Due(sample.slot, sample.pid, MAX_MEMORY, sample.memory / limits.memory, note))
    if limits.requests and sample.requests >= limits.requests:
        note = f"{sample.requests} requests >= {limits.requests}"
        found.append(Due(sample.slot, sample.pid, MAX_REQUESTS, sample.requests / limits.requests, note))
    if limits.lifetime and sample.age >= limits.lifetime:
        note = f"{sample.age:.0f}s old >= {limits.lifetime:.0f}s"
        found.append(Due(sample.slot, sample.pid, MAX_LIFETIME, sample.age / limits.lifetime, note))
    return max(found, key=lambda due: due.overshoot, default=None)


def born_over(first_memory: int, limits: WorkerLimits) -> bool:
    """A worker already over ``--max-memory`` at its first sample after it became ready: a replacement would be
    too, so recycling it would loop. It is reported instead."""
    return bool(limits.memory) and first_memory >= (limits.memory or 0)


def choose(candidates: Iterable[tuple[Sample, WorkerLimits]], held: set[int]) -> Due | None:
    """The worker to recycle now, if any (the first of ``plan``'s), skipping the ``held`` pids."""
    return next(iter(plan(candidates, held)), None)


# --- the --max-memory forecast ----------------------------------------------------------------------------------
WARMUP_S = 2.0  # a fresh worker's first seconds (lazy imports, first buffers) are growth, not a leak
WINDOW_S = 8.0  # the rate is fitted over the samples of the last seconds
MIN_POINTS = 5
MIN_SPAN_S = 4.0
MIN_T = 3.0  # the slope must be this many standard errors above 0: noise is not a trend
MAX_STEP_SHARE = 0.4  # no single step may carry more of the rise: a jump (a cache loaded once) is not a leak
# Windows overlap, so one burst of noise could look like a trend for a look: the trend must hold on this many looks
# in a row (simulated: a flat worker with +-5 MiB of noise shows one about every 7 hours at 1 look/s, not 2 an hour).
CONFIRM_LOOKS = 2
# An early recycle needs the worker to have grown by this share of its headroom (limit - RSS at its first sample):
# a warm-up that lasts and then stops well below the limit never makes replacements recycled early one after another.
MIN_GROWN_SHARE = 1 / 3
DEFAULT_RECYCLE_S = 5.0  # until one is measured: a replacement's start plus a drain, on a modest machine
RECYCLE_EWMA = 0.3


def sustained_rate(points: Sequence[tuple[float, int]]) -> float | None:
    """Bytes/s of steady RSS growth over ``points`` (seconds, bytes), by least squares, or None when the samples do
    not show one: too few or too short, not rising, noise (slope under ``MIN_T`` standard errors) or one jump."""
    n = len(points)
    if n < MIN_POINTS or points[-1][0] - points[0][0] < MIN_SPAN_S:
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    sxx = sum((t - mean_t) ** 2 for t, _ in points)
    if sxx <= 0:
        return None
    slope = sum((t - mean_t) * (m - mean_m) for t, m in points) / sxx
    rise = points[-1][1] - points[0][1]
    if slope <= 0 or rise <= 0:
        return None
    residual = sum((m - mean_m - slope * (t - mean_t)) ** 2 for t, m in points)
    if slope < MIN_T * math.sqrt(residual / (n - 2) / sxx):
        return None
    if max(b - a for (_, a), (_, b) in zip(points, points[1:], strict=False)) > MAX_STEP_SHARE * rise:
        return None
    return slope


class Growth:
    """One worker's RSS samples of the last ``WINDOW_S`` (after its warm-up), and the rate they show once it has
    shown one on ``CONFIRM_LOOKS`` looks in a row."""

    def __init__(self) -> None:
        self._points: deque[tuple[float, int]] = deque(maxlen=256)  # bounded whatever the sampling interval
        self._rate: float | None = None
        self._streak = 0

    def add(self, since_ready: float, memory: int) -> None:
        if since_ready < WARMUP_S or memory <= 0:
            return
        points = self._points
        if points and since_ready <= points[-1][0]:
            return  # times only move forward; a repeated look adds nothing
        points.append((since_ready, memory))
        while since_ready - points[0][0] > WINDOW_S:
            points.popleft()
        self._rate = sustained_rate(list(points))
        self._streak = self._streak + 1 if self._rate is not None else 0

    def rate(self) -> float | None:
        return self._rate if self._streak >= CONFIRM_LOOKS else None


@dataclass(slots=True)
class RecycleDuration:
    """How long a recycle takes (replacement ready, old worker drained): a moving average of the measured ones and
    of their deviation, as TCP estimates a round trip (RFC 6298); the forecast plans with ``budget``."""

    seconds: float = DEFAULT_RECYCLE_S
    deviation: float = 0.0
    measured: int = 0

    @property
    def budget(self) -> float:
        """Seconds to plan a recycle with: the average and twice its deviation (a slow one is not a surprise)."""
        return self.seconds + 2.0 * self.deviation

    def observe(self, seconds: float) -> None:
        if not 0.0 < seconds < 86400.0:
            return
        if not self.measured:  # the first measurement replaces the default, a guess
            self.seconds, self.deviation = seconds, seconds / 4
        else:
            self.deviation += RECYCLE_EWMA * (abs(seconds - self.seconds) - self.deviation)
            self.seconds += RECYCLE_EWMA * (seconds - self.seconds)
        self.measured += 1


def seconds_to_limit(sample: Sample, limits: WorkerLimits) -> float | None:
    """Forecast seconds until ``sample``'s RSS reaches its limit (0 past it), or None when it is not growing (or
    has not yet grown by ``MIN_GROWN_SHARE`` of its headroom)."""
    if not limits.memory or not sample.memory:
        return None
    if sample.memory >= limits.memory:
        return 0.0
    if not sample.growth or not sample.first_memory:
        return None
    if sample.memory - sample.first_memory < MIN_GROWN_SHARE * (limits.memory - sample.first_memory):
        return None  # not grown enough yet to tell a leak from a long warm-up
    return (limits.memory - sample.memory) / sample.growth


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast the line moves: a recycle's duration, the sampling interval, how many run at once, how many run."""

    recycle_s: float = DEFAULT_RECYCLE_S
    interval: float = 1.0
    concurrency: int = 1
    in_flight: int = 0

    def turn_ends(self, position: int) -> float:
        """Seconds from now until the ``position``-th (1-based) worker in line is replaced."""
        return math.ceil((position + self.in_flight) / max(1, self.concurrency)) * self.recycle_s


def memory_line(candidates: Iterable[tuple[Sample, WorkerLimits]], pace: Pace) -> tuple[list[Due], list[str]]:
    """The ``--max-memory`` recycles due now, in order, and a note per worker forecast to pass its limit by more
    than one sampling interval of growth even so (the line is too slow: more ``--recycle-concurrency`` would help).

    The line holds the workers past their limit (furthest first) and those growing toward it (soonest forecast
    crossing first). The worker at position k is due when its forecast RSS at the end of its turn (k recycles
    ahead of it, plus one sampling interval) reaches the limit; every worker ahead of it is due with it."""
    line: list[tuple[float, Sample, WorkerLimits]] = []
    for sample, limits in candidates:
        eta = seconds_to_limit(sample, limits)
        if eta is not None:
            over = eta == 0.0
            line.append((-sample.memory / (limits.memory or 1) if over else eta, sample, limits))
    line.sort(key=lambda entry: entry[0])
    last_due, behind = -1, []
    for position, (key, sample, limits) in enumerate(line, 1):
        eta = max(0.0, key)
        ends = pace.turn_ends(position)
        if eta <= ends + pace.interval:
            last_due = position - 1
        if sample.growth and eta < ends - pace.interval:
            past = (sample.memory + sample.growth * ends - (limits.memory or 0)) / (1 << 20)
            behind.append(f"slot {sample.slot}: forecast {past:.0f} MiB past --max-memory when its turn ends")
    due = []
    for position, (key, sample, limits) in enumerate(line[: last_due + 1], 1):
        limit = limits.memory or 1
        rss = f"RSS {sample.memory >> 20} MiB"
        if key < 0:
            note = f"{rss} >= --max-memory {limit >> 20} MiB"
        else:
            note = (
                f"{rss} growing {(sample.growth or 0) / (1 << 20):.1f} MiB/s: forecast to reach --max-memory"
                f" {limit >> 20} MiB in {key:.1f}s, within its turn (#{position} in line, {pace.recycle_s:.1f}s per"
                f" recycle, {pace.concurrency} at once, + {pace.interval:g}s sampling)"
            )
        due.append(Due(sample.slot, sample.pid, MAX_MEMORY, sample.memory / limit, note))
    return due, behind


def plan(candidates: Iterable[tuple[Sample, WorkerLimits]], held: Iterable[int] = (), pace: Pace = Pace()) -> list[Due]:
    """Every recycle due now, in order, skipping the ``held`` pids: the ``--max-memory`` line (``memory_line``), then
    the workers past ``--max-requests`` or ``--max-lifetime``, the one furthest past first."""
    skip = set(held)
    eligible = [(sample, limits) for sample, limits in candidates if sample.pid not in skip]
    memory, _ = memory_line(eligible, pace)
    taken = {due.pid for due in memory}
    others = [overdue(s, dataclasses.replace(lim, memory=None)) for s, lim in eligible if s.pid not in taken]
    return memory + sorted((d for d in others if d is not None), key=lambda d: -d.overshoot)


def retry_delay(failures: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before a slot whose recycle failed (its replacement did not start) is tried again."""
    return float(min(base * 2 ** max(0, failures - 1), cap)) if failures > 0 else 0.0

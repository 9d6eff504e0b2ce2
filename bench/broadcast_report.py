"""Results of the broadcast benchmark and their Markdown section in docs/BENCHMARKS.md (between the
``<!-- broadcast:start -->`` and ``<!-- broadcast:end -->`` markers; other sections are left alone)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

START, END = "<!-- broadcast:start -->", "<!-- broadcast:end -->"
TITLES = {
    "wsup": "wsup -i 4 (ZeroMQ bus)",
    "broadcaster": "Starlette + broadcaster 0.3 (Redis), uvicorn --workers 4",
    "socketio": "Socket.IO 4 + Redis adapter, pm2 -i 4",
}


@dataclass
class Step:
    rate: float
    published: int
    expected: int
    delivered: int
    publish_s: float
    planned_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: float  # every server-side process (workers, supervisor or master, Redis)
    machine_busy: float  # cores busy on the whole machine during the step (client included)
    server_cores: float  # of which the server's processes
    client_cores: float  # of which the benchmark's client processes (subscribers and publisher)
    closed: int  # subscribers the server closed during the step
    retry: bool = False  # a second try of a rate whose first try failed

    @property
    def other_cores(self) -> float:
        """Cores busy with neither server nor client: other users of this shared machine."""
        return max(0.0, self.machine_busy - self.server_cores - self.client_cores)

    @property
    def lost(self) -> int:
        return self.expected - self.delivered

    @property
    def deliveries_per_s(self) -> float:
        return self.delivered / self.planned_s

    @property
    def cpu_us_per_delivery(self) -> float:
        return self.cpu_s * 1e6 / self.delivered if self.delivered else float("inf")

    def kept_rate(self) -> bool:
        return self.publish_s <= self.planned_s * 1.1 + 0.25

    def ok(self, p99_limit_ms: float) -> bool:
        return self.lost == 0 and self.closed == 0 and self.p99_ms < p99_limit_ms and self.kept_rate()

    def summary(self) -> str:
        return (
            f"{self.rate:.0f} msg/s: {self.delivered}/{self.expected} delivered ({self.lost} lost),"
            f" p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, {self.cpu_us_per_delivery:.2f} CPU-us/delivery,"
            f" published in {self.publish_s:.2f}s of {self.planned_s:.2f}s; cores busy: server {self.server_cores:.2f},"
            f" client {self.client_cores:.2f}, machine {self.machine_busy:.2f}"
        )


@dataclass
class StallResult:
    step: Step
    rss_before: int
    rss_after: int
    pad: int
    counters: dict[str, int] | None = None

    @property
    def growth_mib(self) -> float:
        return (self.rss_after - self.rss_before) / 2**20

    def summary(self) -> str:
        return f"server RSS {self.rss_before / 2**20:.0f} -> {self.rss_after / 2**20:.0f} MiB; {self.step.summary()}"


@dataclass
class ServerResult:
    name: str
    steps: list[Step] = field(default_factory=list)
    stall: StallResult | None = None
    distribution: list[int] = field(default_factory=list)
    warmup_lost: int = 0
    race_lost: int = 0
    race_expected: int = 0

    def race_share(self) -> str:
        return f"{self.race_lost / self.race_expected:.1%}" if self.race_expected else "-"

    error: str | None = None

    def best(self, p99_limit_ms: float) -> Step | None:
        passed = [step for step in self.steps if step.ok(p99_limit_ms)]
        return max(passed, key=lambda step: step.rate) if passed else None

    def at(self, rate: float) -> Step | None:
        return next((step for step in self.steps if step.rate == rate), None)


def _fmt_ms(step: Step | None) -> str:
    return f"{step.p50_ms:.1f} / {step.p99_ms:.1f} ms" if step else "-"


def _why_stopped(step: Step, limit: float) -> str:
    reasons = []
    if step.lost:
        reasons.append(f"{step.lost} lost ({step.lost / step.expected:.1%})")
    if step.closed:
        reasons.append(f"{step.closed} subscribers closed")
    if step.p99_ms >= limit:
        reasons.append(f"p99 {step.p99_ms:.0f} ms")
    if not step.kept_rate():
        reasons.append(f"publisher needed {step.publish_s:.1f}s for {step.planned_s:.1f}s")
    return ", ".join(reasons) or "-"


def render(results: list[ServerResult], args: argparse.Namespace, versions: dict[str, str]) -> str:
    limit = 100.0
    lines = [
        START,
        "## Broadcast fan-out (issue 5)",
        "",
        f"{args.subscribers} WebSocket subscribers of one channel spread over {args.workers} workers, one publisher"
        " (a WebSocket client whose messages the server publishes), all clients on the same machine as the server."
        f" The publish rate steps up ({', '.join(f'{r:.0f}' for r in args.rates)} msg/s, {args.duration:g} s each)"
        f" until a step loses a message, reaches a p99 latency of {limit:.0f} ms or the publisher cannot keep the"
        " rate (a failed rate gets one retry: the machine is shared). CPU is the time of every server-side process"
        " (workers, supervisor or master, Redis) per delivered message. Latency is from the publisher's send to the"
        " subscriber's read (same monotonic clock)."
        f" Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python bench/broadcast.py"
        f"{' --quick' if args.quick else ''}`.",
        "",
        f"| stack | highest rate (p99 < {limit:.0f} ms, 0 lost) | deliveries/s | server CPU-µs per delivery"
        " | p50 / p99 at 200 msg/s | lost after concurrent subscribe | memory growth, 1 stalled client |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        title = TITLES.get(result.name, result.name)
        if result.error:
            lines.append(f"| {title} | not measured: {result.error} | | | | | |")
            continue
        best = result.best(limit)
        at200 = result.at(200)
        stall = result.stall
        lines.append(
            f"| {title} | {f'{best.rate:.0f} msg/s' if best else 'none'} |"
            f" {f'{best.deliveries_per_s / 1000:.0f}k' if best else '-'} |"
            f" {f'{best.cpu_us_per_delivery:.2f}' if best else '-'} | {_fmt_ms(at200)} |"
            f" {result.race_share()} |"
            f" {f'{stall.growth_mib:+.1f} MiB' if stall else '-'} |"
        )
    lines += ["", "Every step:", ""]
    lines += [
        "| stack | msg/s | delivered | lost | p50 ms | p99 ms | CPU-µs/delivery | cores: server / client / others"
        " | stopped by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for step in result.steps:
            lines.append(
                f"| {result.name} | {step.rate:.0f}{' (retry)' if step.retry else ''} | {step.delivered} |"
                f" {step.lost} | {step.p50_ms:.1f} |"
                f" {step.p99_ms:.1f} | {step.cpu_us_per_delivery:.2f} | {step.server_cores:.2f} /"
                f" {step.client_cores:.2f} / {step.other_cores:.2f} |"
                f" {'' if step.ok(limit) else _why_stopped(step, limit)} |"
            )
    lines += ["", f"One stalled client (it stops reading) while {STALL_NOTE}:", ""]
    lines += [
        "| stack | server RSS before → after | other subscribers: lost, p99 | drop counters |",
        "|---|---|---|---|",
    ]
    for result in results:
        stall = result.stall
        if stall is None:
            continue
        counters = (
            ", ".join(f"{k} {v}" for k, v in stall.counters.items() if k in DROP_KEYS) if stall.counters else "none"
        )
        lines.append(
            f"| {result.name} | {stall.rss_before / 2**20:.0f} → {stall.rss_after / 2**20:.0f} MiB"
            f" ({stall.growth_mib:+.1f}) | {stall.step.lost}, {stall.step.p99_ms:.0f} ms | {counters} |"
        )
    lines += [
        "",
        "wsup keeps at most `--bus-queue` (256) messages queued for a client that does not read, references to"
        " frames shared by the worker's clients, and counts every message it drops for it (`dropped_slow`); a"
        " broadcaster subscriber's queue and a Socket.IO socket's buffer grow for as long as the client stalls.",
    ]
    lines += [
        "",
        f"Subscribe races: {args.subscribers} subscribers connect at once (as after a deploy), then 1 s of messages"
        " at 100 msg/s starting 1 s later. The steps above use subscribers that connected one at a time (each"
        " subscribed before the next connects), so that a subscribe race does not hide a stack's fan-out.",
        "",
    ]
    for result in results:
        if not result.error:
            lines.append(
                f"- {result.name}: concurrent subscribe: {result.race_lost} of {result.race_expected} deliveries"
                f" lost; subscribers per worker in the steps {result.distribution}; warm-up before the steps:"
                f" {result.warmup_lost} lost"
            )
    lines += [
        "",
        "Servers (apps in `bench/broadcast_apps.py`, the Socket.IO server in `bench/broadcast_servers.py`): wsup"
        " `wsup start broadcast_apps:wsup_app --app-dir bench -i 4` (default bus settings); broadcaster"
        " `uvicorn broadcast_apps:broadcaster_app --factory --app-dir bench --workers 4` with Redis; Socket.IO"
        " `pm2-runtime start server.js -i 4` (cluster mode, websocket transport only, Redis adapter). Every stack"
        " has the same two endpoints: `/sub` subscribes and forwards, `/pub` publishes what it receives. broadcaster"
        " 0.3.1 loses whole workers' subscriptions to two races (see `broadcaster_app`): the subscribe-race line"
        " runs it as documented; for the steps each worker subscribes at startup with a workaround, so that its"
        " fan-out can be measured at all.",
        "",
        "The machine has 2 cores and is shared with other people's benchmarks and tests; the cores column shows"
        " how much of it the server, the client and everything else used in each step.",
        "",
        f"Machine: {platform.platform()}, {psutil.cpu_count()} CPUs, shared; load average at the end"
        f" {os.getloadavg()[0]:.2f}. Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
        END,
    ]
    return "\n".join(lines)


STALL_NOTE = "16 KiB messages are published at 100 msg/s to every subscriber (the step's duration)"
DROP_KEYS = ("dropped_slow", "disconnected_slow", "dropped_hwm", "lost")


def write_section(path: Path, section: str) -> None:
    """Replace our section in ``path`` (re-read right before writing: other benchmarks write their own)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)

"""``GET /metrics``: the supervisor's live view in Prometheus text format (supervisor process).

A custom ``prometheus_client`` collector turns one ``MetricsFacts`` (gathered by ``supervisor.process.operators``)
into metric families at scrape time: nothing is recorded per request or per connection, and no file is written per
worker (prometheus_client's multiprocess mode piles those up under worker churn). Every per-worker series is
labelled by the stable ``slot``, never the pid. prometheus_client is an optional extra (``wsup[metrics]``): without
it, ``render`` raises ``MetricsUnavailable`` and the endpoint answers 501.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Bus counters reported by workers (``ipc.bus_counters.BusCounters``), by the label they get.
BUS_DIRECTIONS = {"published": "bus.published", "received": "bus.received", "delivered": "bus.delivered"}
BUS_DROPS = {
    "lost": "bus.lost",
    "hwm": "bus.dropped_hwm",
    "slow": "bus.dropped_slow",
    "slow_disconnect": "bus.disconnected_slow",
    "malformed": "bus.malformed",
    "too_large": "bus.too_large",
}


class MetricsUnavailable(Exception):
    """prometheus_client is not installed."""


@dataclass(slots=True)
class SlotFacts:
    http: int = 0
    websocket: int = 0
    rss_bytes: int = 0
    loop_lag_s: float = 0.0
    weight: int | None = None


@dataclass(slots=True)
class MetricsFacts:
    slots: dict[int, SlotFacts] = field(default_factory=dict)
    workers_by_state: Counter[str] = field(default_factory=Counter)
    totals: dict[int, Counter[str]] = field(default_factory=dict)  # slot -> monotonic counters (SlotTotals)
    replacements: dict[int, Counter[str]] = field(default_factory=dict)  # slot -> reason -> count
    operations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (operation, outcome) -> count
    supervisor_published: int = 0
    shared_weight: int | None = None  # the shared accept queue's steering weight; None: no shared queue


def render(facts: Callable[[], MetricsFacts]) -> tuple[bytes, str]:
    """The exposition and its content type; ``facts`` is called once per scrape."""
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:
        raise MetricsUnavailable("/metrics needs prometheus_client: pip install 'wsup[metrics]'") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(facts))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    def __init__(self, facts: Callable[[], MetricsFacts]) -> None:
        self._facts = facts

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        f = self._facts()

        def gauge(name: str, doc: str, labels: list[str]) -> Any:
            return GaugeMetricFamily(name, doc, labels=labels)

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return CounterMetricFamily(name, doc, labels=labels)

        up = gauge("wsup_up", "1 while the supervisor answers", [])
        up.add_metric([], 1)
        yield up
        workers = gauge("wsup_workers", "Worker processes by state (draining and starting replacements too)", ["state"])
        for state in ("starting", "ready", "draining"):
            workers.add_metric([state], f.workers_by_state.get(state, 0))
        yield workers
        connections = gauge("wsup_connections", "Live connections held by the slot's workers", ["slot", "kind"])
        rss = gauge("wsup_worker_rss_bytes", "Resident memory of the slot's worker processes", ["slot"])
        lag = gauge("wsup_worker_loop_lag_seconds", "Event loop lag of the slot's serving worker", ["slot"])
        weight = gauge("wsup_steering_weight", "Steering weight of the slot (share of new connections)", ["slot"])
        for slot, facts in sorted(f.slots.items()):
            label = str(slot)
            connections.add_metric([label, "http"], facts.http)
            connections.add_metric([label, "websocket"], facts.websocket)
            rss.add_metric([label], facts.rss_bytes)
            lag.add_metric([label], facts.loop_lag_s)
            if facts.weight is not None:
                weight.add_metric([label], facts.weight)
        yield from (connections, rss, lag, weight)
        if f.shared_weight is not None:
            shared = gauge(
                "wsup_steering_shared_queue_weight", "Steering weight of the queue every worker takes from", []
            )
            shared.add_metric([], f.shared_weight)
            yield shared
        yield from self._slot_counters(f, counter)
        reloads = counter("wsup_reloads", "Reloads by outcome", ["result"])
        for result in ("ok", "failed", "interrupted"):
            reloads.add_metric([result], f.operations.get(("reload", result), 0))
        yield reloads
        yield from self._bus(f, counter)

    def _slot_counters(self, f: MetricsFacts, counter: Callable[[str, str, list[str]], Any]) -> Iterator[Any]:
        requests = counter("wsup_requests", "HTTP responses completed by the slot's workers", ["slot"])
        sessions = counter("wsup_websocket_sessions", "WebSocket sessions opened on the slot", ["slot"])
        accepted = counter("wsup_connections_accepted", "TCP connections accepted by the slot's workers", ["slot"])
        cpu = counter("wsup_worker_cpu_seconds", "CPU time (user + system) of the slot's workers", ["slot"])
        for slot, totals in sorted(f.totals.items()):
            label = str(slot)
            requests.add_metric([label], totals.get("requests", 0))
            sessions.add_metric([label], totals.get("websocket_sessions", 0))
            accepted.add_metric([label], totals.get("accepted", 0))
            cpu.add_metric([label], totals.get("cpu_seconds", 0.0))
        yield from (requests, sessions, accepted, cpu)
        restarts = counter("wsup_worker_restarts", "Workers replaced on the slot, by reason", ["slot", "reason"])
        for slot, reasons in sorted(f.replacements.items()):
            for reason, count in sorted(reasons.items()):
                restarts.add_metric([str(slot), reason], count)
        yield restarts

    def _bus(self, f: MetricsFacts, counter: Callable[[str, str, list[str]], Any]) -> Iterator[Any]:
        summed: Counter[str] = sum(f.totals.values(), Counter())
        messages = counter("wsup_bus_messages", "Broadcast bus messages, summed over workers", ["direction"])
        for direction, key in BUS_DIRECTIONS.items():
            messages.add_metric([direction], summed.get(key, 0))
        messages.add_metric(["published_by_supervisor"], f.supervisor_published)
        dropped = counter("wsup_bus_dropped", "Broadcast bus messages dropped, by reason", ["reason"])
        for reason, key in BUS_DROPS.items():
            dropped.add_metric([reason], summed.get(key, 0))
        yield from (messages, dropped)
        closes = counter("wsup_websocket_closes", "WebSocket sessions ended, by close code", ["code"])
        for key, count in sorted(summed.items()):
            if key.startswith("closes."):
                closes.add_metric([key[7:]], count)
        yield closes

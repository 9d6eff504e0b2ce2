"""The ``wsup status --json`` document, built from the supervisor's live view of its slots and workers.

This shape is documented in the README and is what scripts rely on: add fields, never rename or remove them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psutil

from ipc.messages import MAX_COUNT
from supervisor.process.fleet import Fleet
from supervisor.process.slots import Slot, WorkerHandle


def _worker_row(worker: WorkerHandle, slot: Slot | None, weight: int | None, total_weight: int) -> dict[str, Any]:
    report = worker.last_report
    cpu, rss = worker.usage()
    http = report.http if report else 0
    websocket = report.websocket if report else 0
    requests = report.requests if report else 0
    sessions = report.websocket_sessions if report else 0
    return {
        "slot": worker.slot,
        "pid": worker.pid,
        "generation": worker.generation,
        "state": worker.state.value,
        "connections": {"http": http, "websocket": websocket},
        "in_flight": report.in_flight if report else 0,
        "served": requests + sessions,
        "requests": requests,
        "websocket_sessions": sessions,
        "cpu_percent": round(cpu, 1),
        "rss_bytes": rss,
        "uptime_s": round(time.monotonic() - worker.started_at, 1),
        "restarts": slot.restarts if slot else 0,
        "loop_lag_ms": report.loop_lag_ms if report else 0.0,
        "last_report_ms": round(worker.report_age() * 1000),
        "weight": weight,
        "weight_share": round(weight / total_weight, 4) if weight is not None and total_weight else None,
        "crash_loop": slot.crash_loop if slot else False,
        "pending": slot.pending if slot else False,  # a running reload will replace it: no new connections
        "reason": slot.last_reason if slot else None,
        "replacements": dict(slot.replacements) if slot else {},
        "last_error": slot.last_error if slot else worker.error,
        "bus": dict(report.bus) if report else {},
        "http_limits": dict(report.http_limits) if report else {},
    }


def counter_totals(rows: Sequence[dict[str, Any]], field: str) -> dict[str, int]:
    """Every live worker's counters of one kind summed (draining workers included: their drops happened too)."""
    totals: dict[str, int] = {}
    for row in rows:
        for key, value in (row.get(field) or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] = min(totals.get(key, 0) + value, MAX_COUNT)  # saturates, as each worker's does
    return totals


def bus_totals(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return counter_totals(rows, "bus")


def build_status(
    *,
    info: dict[str, Any],
    fleet: Fleet,
    balance: dict[str, Any],
    ipc: dict[str, Any],
    started_at: float,
    errors: dict[str, Any],
) -> dict[str, Any]:
    slots = fleet.slots
    weights: list[int] = list(balance.get("weights") or [])
    total_weight = sum(weights) + int(balance.get("shared_weight") or 0)  # a slot's share counts the shared queue's
    rows = []
    for slot in slots:
        if slot.worker is not None:
            weight = weights[slot.index] if slot.index < len(weights) else None
            rows.append(_worker_row(slot.worker, slot, weight, total_weight))
        else:
            rows.append(
                {
                    "slot": slot.index,
                    "pid": None,
                    "state": "crash-loop" if slot.crash_loop else "restarting",
                    "connections": {"http": 0, "websocket": 0},
                    "restarts": slot.restarts,
                    "crash_loop": slot.crash_loop,
                    "pending": slot.pending,
                    "reason": slot.last_reason,
                    "replacements": dict(slot.replacements),
                    "last_error": slot.last_error,
                    "next_start_in_s": round(max(0.0, slot.next_start_at - time.monotonic()), 2),
                }
            )
    draining = [_worker_row(entry.worker, None, 0, total_weight) for entry in fleet.draining]
    # Replacements a reload started that are not serving yet (they take no steered connections).
    starting = [_worker_row(worker, None, 0, total_weight) for worker in fleet.candidates()]
    live = [row for row in rows + draining + starting if row.get("pid") is not None]
    try:
        supervisor_rss = psutil.Process(os.getpid()).memory_info().rss
    except psutil.Error:
        supervisor_rss = 0
    return {
        **info,
        "supervisor": {
            "pid": os.getpid(),
            "rss_bytes": supervisor_rss,
            "uptime_s": round(time.time() - started_at, 1),
            "errors": errors,
        },
        "balance": balance,
        "workers": rows,
        "draining": draining,
        "starting": starting,
        "totals": {
            "workers": len(slots),
            "ready": sum(1 for row in rows if row["state"] == "ready"),
            "connections": {
                "http": sum(row["connections"]["http"] for row in live),
                "websocket": sum(row["connections"]["websocket"] for row in live),
            },
            "served": sum(row.get("served", 0) for row in live),
            "rss_bytes": sum(row.get("rss_bytes", 0) for row in live),
            "cpu_percent": round(sum(row.get("cpu_percent", 0.0) for row in live), 1),
            "restarts": sum(slot.restarts for slot in slots),
            "replacements": dict(sum((slot.replacements for slot in slots), Counter[str]())),
            "bus": bus_totals(live),
            "http_limits": counter_totals(live, "http_limits"),
        },
        "ipc": ipc,
    }

"""The steering benchmark's results as the markdown section of docs/BENCHMARKS.md between ``<!-- steering:start -->``
and ``<!-- steering:end -->`` (the file is created if missing; other sections are left alone)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

START, END = "<!-- steering:start -->", "<!-- steering:end -->"
LABELS = {"uvicorn": "uvicorn `--workers 4`", "wsup-hash": "wsup `--balance hash`", "wsup": "wsup (least-conn)"}


def _ratio(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}"


def _range(values: list[float]) -> str:
    """min / median / max of a few runs."""
    if not values:
        return "n/a"
    return f"{_ratio(min(values))} / **{_ratio(statistics.median(values))}** / {_ratio(max(values))}"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "n/a"


def _cells(results: dict[str, Any], render: Any) -> str:
    return " | ".join(render(results["servers"].get(name, {})) for name in LABELS)


def render(results: dict[str, Any]) -> str:
    meta, costs, runs = results["meta"], results["costs"], results["runs"]
    n = meta["clients"]

    def bursts(server: dict[str, Any]) -> str:
        return _range([run["spread"] for run in server.get("burst", [])])

    def spread_out(server: dict[str, Any]) -> str:
        return _range([run["spread"] for run in server.get("spread_out", [])])

    def even(key: str) -> Any:
        def cell(server: dict[str, Any]) -> str:
            trials = server.get(key, [])
            if not trials:
                return "n/a"
            worst = max(trials, key=lambda r: r["counts"][-1] - r["counts"][0])["counts"]
            return f"{sum(r['even'] for r in trials)}/{len(trials)} (worst {'/'.join(map(str, reversed(worst)))})"

        return cell

    def crash(key: str) -> Any:
        def cell(server: dict[str, Any]) -> str:
            runs_ = server.get(key, [])
            if not runs_:
                return "n/a"
            parts = [
                f"{r['to_replacement']}/{r['lost']} to the new worker (up after {r['ready_s']:.1f} s),"
                f" end {_ratio(r['final_spread'])}"
                for r in runs_
            ]
            return "; ".join(parts)

        return cell

    def stall(server: dict[str, Any]) -> str:
        runs_ = server.get("stall", [])
        if not runs_:
            return "n/a"
        parts = []
        for r in runs_:
            text = f"{r['waited']}/{r['during']} waited >250 ms (max {r['max_wait_s']:.2f} s)"
            text += f", {r['waited_after_limit']} after the first 250 ms"
            if r.get("weight_zero_s") is not None:
                text += f"; weight 0 after {r['weight_zero_s'] * 1000:.0f} ms"
            parts.append(text)
        return "; ".join(parts)

    def latencies(key: str) -> Any:
        return lambda server: " / ".join(
            _ms([run[stat] for run in server.get(key, [])]) for stat in ("p50_ms", "p99_ms")
        )

    def http(server: dict[str, Any]) -> str:
        if "http_p50_ms" not in server:
            return "n/a"
        return f"{server['http_p50_ms']:.2f} / {server['http_p99_ms']:.2f}"

    header = " | ".join(LABELS.values())
    lines = [
        START,
        "## Connection steering (issue 3)",
        "",
        f"Measured {meta['date']} on {meta['machine']}; {meta['versions']}. Load average before/after the run:"
        f" {meta['load_before']} / {meta['load_after']} (the machine is shared: other engineers' tests ran too).",
        "",
        f"Command: `{meta['command']}`. Each server ran {meta['workers']} workers of `app:asgi` on 127.0.0.1, all three"
        " side by side, runs interleaved; the stall row used `tests/apps/stall.py` on all three. Clients are our own"
        " (Python websockets, in one process); every WebSocket is greeted with its worker's pid.",
        "",
        f"| scenario | {header} | target |",
        "|---|---|---|---|---|",
        f"| {n} WebSockets at once: max/min per worker (min / **median** / max of {runs['burst']} runs) |"
        f" {_cells(results, bursts)} | ≤ 1.05 |",
        f"| {n} arriving over {meta['spread_over_s']:g} s: max/min (min / **median** / max of {runs['spread_out']}) |"
        f" {_cells(results, spread_out)} | ≤ 1.05 |",
        f"| {meta['workers']} WebSockets {meta['sparse_gap_s']:g} s apart: trials with exactly one per worker |"
        f" {_cells(results, even('sparse4'))} | all |",
        f"| {2 * meta['workers']} WebSockets {meta['sparse_gap_s']:g} s apart: trials with exactly two per worker |"
        f" {_cells(results, even('sparse8'))} | all |",
        f"| {2 * meta['workers']} WebSockets {meta['sparse_fast_gap_s'] * 1000:g} ms apart: the same |"
        f" {_cells(results, even('sparse8_fast'))} | |",
        f"| {meta['workers']} WebSockets {meta['sparse_gap_s']:g} s apart, each trial after"
        f" {'-'.join(f'{s:g}' for s in meta.get('sparse_idle_s', ()))} s with no client: one per worker |"
        f" {_cells(results, even('sparse4_idle'))} | all |",
        f"| worker killed with {n} connected; its clients back over 1 s once the replacement serves |"
        f" {_cells(results, crash('crash'))} | the new worker refilled first |",
        f"| the same, clients back 0.5-1.5 s after the cut, replacement up or not |"
        f" {_cells(results, crash('crash_early'))} | |",
        f"| one event loop blocked {meta['stall_s']:g} s, clients arriving every 50 ms |"
        f" {_cells(results, stall)} | nothing waits past ~250 ms |",
        "",
        "Cost of steering:",
        "",
        f"| measure | {header} |",
        "|---|---|---|---|",
        f"| WebSocket connect + greeting, {n} at once: p50 / p99 ms (median of runs) |"
        f" {_cells(results, latencies('burst'))} |",
        f"| WebSocket connect + greeting, arriving over {meta['spread_over_s']:g} s: p50 / p99 ms |"
        f" {_cells(results, latencies('spread_out'))} |",
        f"| new TCP connection + `GET /health`, {meta['http_requests']} one after the other: p50 / p99 ms |"
        f" {_cells(results, http)} |",
        "",
        f"- Rebuilding and re-attaching the program (4 slots, {costs['attach_runs']} times on a private group):"
        f" build {costs['build_us_mean']:.1f} µs, attach mean {costs['attach_us_mean']:.1f} µs, p99"
        f" {costs['attach_us_p99']:.1f} µs; the policy's plan (LoadTracker.plan) {costs['plan_us_mean']:.1f} µs.",
        f"- As `wsup status` reports it over the whole run: {costs['status_updates']} re-attaches, mean"
        f" {costs['status_mean_attach_us']} µs each.",
        "",
        *results.get("notes", []),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace our section of ``path`` (or append it; create the file if missing), leaving the rest alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start, end = text.find(START), text.find(END)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")

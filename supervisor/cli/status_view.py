"""Human-readable rendering of the status document (the JSON form is printed as is)."""

from __future__ import annotations

from typing import Any


def _size(n: int | None) -> str:
    if not n:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_COLUMNS = ("slot", "pid", "state", "http", "ws", "served", "cpu%", "rss", "uptime", "restarts", "weight")


def _row(worker: dict[str, Any], label: str | None = None) -> list[str]:
    share = worker.get("weight_share")
    return [
        label if label is not None else str(worker["slot"]),
        str(worker.get("pid") or "-"),
        str(worker["state"]),
        str(worker["connections"]["http"]),
        str(worker["connections"]["websocket"]),
        str(worker.get("served", "-")),
        f"{worker['cpu_percent']:.1f}" if "cpu_percent" in worker else "-",
        _size(worker.get("rss_bytes")),
        _duration(worker.get("uptime_s")),
        str(worker.get("restarts", 0)),
        f"{share * 100:.0f}%" if isinstance(share, float) else "-",
    ]


_BUS_DROPS = ("dropped_slow", "disconnected_slow", "dropped_hwm", "lost", "malformed", "seq_jumps")


def _count(n: int) -> str:
    if n < 10_000:
        return str(n)
    if n < 10_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def _bus_line(label: str, bus: dict[str, Any]) -> str:
    """One line of broadcast counters: what flowed, then every kind of drop (all zero on a healthy instance)."""

    def get(key: str) -> str:
        return _count(int(bus.get(key, 0)))

    return (
        f"{label}: {get('members')} members, {get('published')} published, {get('delivered')} delivered;"
        f" dropped: {get('dropped_slow')} slow, {get('disconnected_slow')} disconnected,"
        f" {get('dropped_hwm')} queue-full, {get('lost')} lost; {get('malformed')} malformed"
        + (f", {get('seq_jumps')} sequence jumps" if bus.get("seq_jumps") else "")
    )


def render_status(status: dict[str, Any]) -> str:
    balance = status.get("balance", {})
    mode = balance.get("mode", "?")
    if balance.get("reason"):
        mode += f" ({balance['reason']})"
    lines = [
        f"wsup {status['name']}: {status['app']} on {status.get('address', '?')}  "
        f"supervisor pid {status['supervisor']['pid']}, up {_duration(status['supervisor']['uptime_s'])}, "
        f"rss {_size(status['supervisor']['rss_bytes'])}  balance: {mode}"
    ]
    table = [list(_COLUMNS)]
    table += [_row(w) for w in status["workers"]]
    table += [_row(w, f"{w['slot']}*") for w in status.get("draining", [])]
    totals = status["totals"]
    table.append(
        [
            "total",
            "",
            f"{totals['ready']}/{totals['workers']} ready",
            str(totals["connections"]["http"]),
            str(totals["connections"]["websocket"]),
            str(totals["served"]),
            f"{totals['cpu_percent']:.1f}",
            _size(totals["rss_bytes"]),
            "",
            str(totals["restarts"]),
            "",
        ]
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
    if status.get("draining"):
        lines.append("* draining: replaced or removed, finishing its connections")
    bus = totals.get("bus")
    if bus:
        lines.append(_bus_line("bus", bus))
        for worker in status["workers"] + status.get("draining", []):
            if any((worker.get("bus") or {}).get(key) for key in _BUS_DROPS):
                lines.append(_bus_line(f"  slot {worker['slot']} pid {worker['pid']}", worker["bus"]))
    for worker in status["workers"]:
        if worker.get("crash_loop") or (worker.get("pid") is None and worker.get("last_error")):
            lines.append(f"slot {worker['slot']}: {worker.get('last_error')}")
    return "\n".join(lines)


def render_instances(instances: list[dict[str, Any]]) -> str:
    lines = ["several instances are running; pass --name to choose one:"]
    for info in instances:
        lines.append(
            f"  {info.get('name')}: {info.get('app', '?')} on {info.get('address', '?')} (pid {info.get('pid', '?')})"
        )
    return "\n".join(lines)

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


_MANAGER = ("manager_received", "manager_dropped", "manager_unsent", "manager_malformed")


def _manager_line(bus: dict[str, Any]) -> str:
    """The Socket.IO manager's stream (ipc.socketio): its messages, its deepest backlog, and anything lost."""
    return (
        f"socketio: {_count(int(bus.get('manager_received', 0)))} manager messages received,"
        f" backlog peak {_count(int(bus.get('manager_backlog_peak', 0)))};"
        f" lost: {_count(int(bus.get('manager_dropped', 0)))} dropped,"
        f" {_count(int(bus.get('manager_unsent', 0)))} unsent; {_count(int(bus.get('manager_malformed', 0)))} malformed"
    )


_HTTP_LIMITS = (  # (key in the status document, how the line names it): the keys are the options that set them
    ("max_header_bytes", "431 over --max-header-bytes"),
    ("max_connections", "503 over --max-connections"),
    ("header_timeout", "closed by --header-timeout"),
    ("idle_timeout", "closed by --idle-timeout"),
    ("unread_body", "closed with an unread body"),
)


def _http_limits_line(label: str, counts: dict[str, Any]) -> str:
    """One line of what the HTTP limits refused or closed (supervisor.worker.http_limits)."""
    return f"{label}: " + ", ".join(f"{_count(int(counts.get(key, 0)))} {what}" for key, what in _HTTP_LIMITS)


def _http_limits_lines(status: dict[str, Any]) -> list[str]:
    """The total, then each worker that refused or closed anything; nothing at all while no limit acted."""
    total = (status.get("totals") or {}).get("http_limits") or {}
    if not any(total.get(key) for key, _ in _HTTP_LIMITS):
        return []
    lines = [_http_limits_line("http limits", total)]
    for worker in status["workers"] + status.get("draining", []):
        counts = worker.get("http_limits") or {}
        if any(counts.get(key) for key, _ in _HTTP_LIMITS):
            lines.append(_http_limits_line(f"  slot {worker['slot']} pid {worker['pid']}", counts))
    return lines


def render_status(status: dict[str, Any]) -> str:
    balance = status.get("balance", {})
    mode = balance.get("mode", "?")
    if balance.get("reason"):
        mode += f" ({balance['reason']})"
    if balance.get("shared_queue"):  # a stream of short connections: any worker takes them from one queue
        mode += f", shared queue {balance['shared_queue']:.0%}"
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
    if bus and any(bus.get(key) for key in _MANAGER):
        lines.append(_manager_line(bus))
    lines += _http_limits_lines(status)
    lines += _recycling_lines(status)
    log = status.get("log") or {}
    if log:
        where = log.get("file") or "the terminal it was started from"
        lines.append(f"log: {where}" + (" (json)" if log.get("format") == "json" else ""))
    if status.get("admin"):
        lines.append(f"admin: {status['admin']} (dashboard; /metrics, /health, /status)")
    for worker in status["workers"]:
        if worker.get("crash_loop") or (worker.get("pid") is None and worker.get("last_error")):
            lines.append(f"slot {worker['slot']}: {worker.get('last_error')}")
    lines += _multihost_lines(status)
    return "\n".join(lines)


def _recycling_lines(status: dict[str, Any]) -> list[str]:
    """What replaced workers, by reason, and the recycling limits with whatever holds a worker back."""
    lines = []
    replaced = (status.get("totals") or {}).get("replacements") or {}
    if replaced:
        lines.append("replaced: " + ", ".join(f"{count} by {reason}" for reason, count in sorted(replaced.items())))
    recycling = status.get("recycling") or {}
    limits = []
    if recycling.get("max_requests"):
        limits.append(f"after {recycling['max_requests']} requests (+0..{recycling.get('max_requests_jitter', 0)})")
    if recycling.get("max_lifetime_s"):
        limits.append(f"at {_duration(recycling['max_lifetime_s'])} old")
    if recycling.get("max_memory_bytes"):
        limits.append(f"at {_size(recycling['max_memory_bytes'])} RSS")
    if limits:
        at_once = recycling.get("concurrency", 1)
        lines.append(
            f"recycling: {', '.join(limits)}; {recycling.get('recycled', 0)} recycled"
            + (f", up to {at_once} at once" if at_once > 1 else "")
        )
    lines += [f"  held: {note}" for note in recycling.get("held") or []]
    lines += [f"  behind: {note}" for note in recycling.get("behind") or []]
    if recycling.get("last_error"):
        lines.append(f"  last failure: {recycling['last_error']}")
    return lines


def _multihost_lines(status: dict[str, Any]) -> list[str]:
    """The host's drain, its agent-check and its bus bridge, each only when in use."""
    lines = []
    drain = status.get("host_drain") or {}
    if drain.get("draining"):
        move = f", moving WebSockets over {drain['window_s']:g}s ({drain['move']})" if drain.get("move") else ""
        lines.append(f"DRAINING: the balancer sends no new connections{move}; `wsup resume` undoes it")
    agent = status.get("agent")
    if agent:
        lines.append(f"agent-check on {agent['address']}: {agent['now']!r} ({_count(agent['answers'])} answers)")
    bridge = status.get("bridge")
    if bridge:
        lines.append(
            f"bridge {bridge['state']} to {bridge['address']} (prefix {bridge['prefix']!r}): "
            f"{bridge['channels']} channels, out {_count(bridge['messages_out'])}, in {_count(bridge['messages_in'])},"
            f" dropped {_count(bridge['dropped'])}, reconnects {bridge['reconnects']}"
        )
        if bridge["state"] != "connected" and bridge.get("last_error"):
            lines.append(f"  last error: {bridge['last_error']}")
    return lines


def render_instances(instances: list[dict[str, Any]]) -> str:
    lines = ["several instances are running; pass --name to choose one:"]
    for info in instances:
        lines.append(
            f"  {info.get('name')}: {info.get('app', '?')} on {info.get('address', '?')} (pid {info.get('pid', '?')})"
        )
    return "\n".join(lines)


def progress_line(event: dict[str, Any]) -> str | None:
    """One line per slot a reload, restart or scale changed (None for the events that say nothing new)."""
    kind = event.get("event")
    if kind == "replaced":
        drained = event["drained"]
        return (
            f"slot {event['slot']}: {event['old_pid']} -> {event['new_pid']}, drained {drained['http']} HTTP"
            f" + {drained['websocket']} WebSocket connections in {event['seconds']:.2f}s"
        )
    if kind == "added":
        return f"slot {event['slot']}: added worker {event['pid']}" + (f" ({event['error']})" if event["error"] else "")
    if kind == "removed":
        drained = event["drained"]
        return (
            f"slot {event['slot']}: removed worker {event['pid']}, drained {drained['http']} HTTP"
            f" + {drained['websocket']} WebSocket connections"
        )
    return None

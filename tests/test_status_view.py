"""The human form of `wsup status`: what the balance mode, the Socket.IO manager's counters and the HTTP limits'
counts look like."""

from __future__ import annotations

from typing import Any

from supervisor.cli.status_view import render_status


def _status(bus: dict[str, int], mode: str = "ip-hash") -> dict[str, Any]:
    worker = {
        "slot": 0,
        "pid": 10,
        "state": "ready",
        "connections": {"http": 0, "websocket": 3},
        "weight_share": 1.0,
        "bus": bus,
    }
    totals = {
        "workers": 1,
        "ready": 1,
        "connections": {"http": 0, "websocket": 3},
        "served": 3,
        "cpu_percent": 0.0,
        "rss_bytes": 0,
        "restarts": 0,
        "bus": bus,
    }
    return {
        "name": "chat",
        "app": "app.socketio_chat:asgi",
        "address": "http://127.0.0.1:8000",
        "supervisor": {"pid": 9, "uptime_s": 5, "rss_bytes": 0},
        "balance": {"mode": mode, "buckets": [256], "weights": [256]},
        "workers": [worker],
        "totals": totals,
    }


def test_the_mode_and_the_socketio_line() -> None:
    bus = {"members": 4, "manager_received": 12_400, "manager_backlog_peak": 64, "manager_malformed": 2}
    text = render_status(_status(bus))
    assert "balance: ip-hash" in text
    assert "socketio: 12.4k manager messages received, backlog peak 64; lost: 0 dropped, 0 unsent; 2 malformed" in text


def test_no_socketio_line_without_a_manager() -> None:
    assert "socketio:" not in render_status(_status({"members": 1, "published": 5}, mode="least-conn"))


def test_http_limits_total_and_the_workers_that_acted() -> None:
    status = _status({"members": 1}, mode="least-conn")
    quiet = {"max_header_bytes": 0, "max_connections": 0, "header_timeout": 0, "idle_timeout": 0, "unread_body": 0}
    acted = {**quiet, "header_timeout": 1000, "idle_timeout": 12_345}
    status["workers"] = [
        {**status["workers"][0], "http_limits": acted},
        {**status["workers"][0], "slot": 1, "pid": 11, "http_limits": quiet},
    ]
    status["totals"]["http_limits"] = acted
    lines = render_status(status).splitlines()
    assert (
        "http limits: 0 431 over --max-header-bytes, 0 503 over --max-connections, 1000 closed by --header-timeout,"
        " 12.3k closed by --idle-timeout, 0 closed with an unread body"
    ) in lines
    assert [line for line in lines if line.startswith("  slot ")] == [
        "  slot 0 pid 10: 0 431 over --max-header-bytes, 0 503 over --max-connections, 1000 closed by --header-timeout,"
        " 12.3k closed by --idle-timeout, 0 closed with an unread body"
    ]


def test_no_http_limits_line_while_no_limit_acted() -> None:
    status = _status({"members": 1}, mode="least-conn")
    status["totals"]["http_limits"] = {"idle_timeout": 0}
    assert "http limits" not in render_status(status)
    del status["totals"]["http_limits"]  # an older supervisor's document
    assert "http limits" not in render_status(status)


def test_the_recycling_line_says_how_many_at_once_and_which_workers_the_line_is_too_slow_for() -> None:
    status = _status({})
    status["recycling"] = {
        "max_memory_bytes": 150 << 20,
        "recycled": 7,
        "concurrency": 2,
        "held": [],
        "behind": ["slot 3: forecast 19 MiB past --max-memory when its turn ends"],
    }
    text = render_status(status)
    assert "recycling: at 150.0MiB RSS; 7 recycled, up to 2 at once" in text
    assert "  behind: slot 3: forecast 19 MiB past --max-memory when its turn ends" in text
    status["recycling"]["concurrency"] = 1
    assert "at once" not in render_status(status)

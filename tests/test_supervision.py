"""Crash loops back off and are reported; a worker whose event loop stops beating is replaced."""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.clients import http_get
from tests.wsup_harness import Instance, wait_until


def test_crash_loop_backs_off_is_reported_and_recovers(
    start_wsup: Callable[..., Instance], wsup_env: dict[str, str], run_dir: Path
) -> None:
    marker = run_dir / "crash"
    wsup_env["CRASHY_MARKER"] = str(marker)
    wsup = start_wsup("tests.apps.crashy:asgi", "-i", "2")
    wsup.wait_ready(2)
    victim = wsup.worker_pids()[0]
    marker.touch()
    os.kill(victim, signal.SIGKILL)

    def crash_looping() -> bool:
        row = next(w for w in wsup.status()["workers"] if w["slot"] == 0)
        return bool(row["crash_loop"])

    wait_until(crash_looping, 30, 0.1, "slot 0 to be reported in a crash loop")
    status = wsup.status()
    slot0 = next(w for w in status["workers"] if w["slot"] == 0)
    assert "code 17" in (slot0["last_error"] or ""), slot0
    # Backoff: a handful of attempts in this time, not hundreds.
    assert 2 <= slot0["restarts"] <= 8, slot0["restarts"]
    assert "crash loop" in wsup.log()
    # The other slot keeps serving meanwhile.
    assert http_get(wsup.port)[0] == 200

    marker.unlink()
    wait_until(lambda: wsup.status()["totals"]["ready"] == 2, 40, 0.2, "slot 0 to recover")


def test_worker_with_a_blocked_event_loop_is_replaced(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("tests.apps.crashy:asgi", "-i", "2", "--heartbeat-timeout", "2")
    wsup.wait_ready(2)
    before = wsup.worker_pids()
    conn = http.client.HTTPConnection("127.0.0.1", wsup.port, timeout=60)
    try:
        conn.request("GET", "/block?s=30")

        def replaced() -> bool:
            now = wsup.worker_pids()
            return len(now) == 2 and len(set(now.values()) & set(before.values())) == 1

        wait_until(replaced, 30, 0.1, "the blocked worker to be replaced")
    finally:
        conn.close()
    assert "no heartbeat" in wsup.log()

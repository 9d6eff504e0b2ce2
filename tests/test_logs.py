"""``--log-file`` in the foreground, ``wsup logs`` (-n, --slot, -f across a reload), reopening on SIGUSR1 after a
rotation (the workers too), and ``--log-format json``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.wsup_harness import WSUP, Instance, wait_until


def test_logs_follow_a_reload_and_a_rotation(start_wsup: Callable[..., Instance], run_dir: Path) -> None:
    log = run_dir / "app.log"
    wsup = start_wsup("app:asgi", "-i", "2", "--log-file", str(log))
    status = wsup.wait_ready(2)
    assert status["log"] == {"file": str(log), "format": "text"}
    assert "[worker 1/" in log.read_text() and "[wsup]" in log.read_text()
    assert "[worker" not in wsup.log()  # the foreground's terminal gets nothing from the workers

    last = wsup.cli("logs", "--name", wsup.name, "-n", "3", "--slot", "1")
    lines = last.stdout.splitlines()
    assert last.returncode == 0 and len(lines) == 3 and all("[worker 1/" in line for line in lines), last.stdout

    follower = subprocess.Popen(
        [*WSUP, "logs", "--name", wsup.name, "-f", "-n", "0", "--slot", "0"],
        env=wsup.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    followed: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in follower.stdout or []:
            followed.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wsup.cli("reload", "--name", wsup.name).returncode == 0
        new_generation = next(w["generation"] for w in wsup.status()["workers"] if w["slot"] == 0)
        seen: list[str] = []

        def followed_new_worker() -> bool:
            while not followed.empty():
                seen.append(followed.get())
            return any(f"[worker 0/{new_generation}] " in line and "serving" in line for line in seen)

        wait_until(followed_new_worker, 30, 0.1, "`wsup logs -f` to show the replacement of slot 0")
        assert all("[worker 0/" in line for line in seen), seen

        # logrotate: move the file away, then SIGUSR1 to the supervisor.
        rotated = run_dir / "app.log.1"
        os.rename(log, rotated)
        os.kill(wsup.proc.pid, signal.SIGUSR1)
        wait_until(lambda: log.exists() and "log reopened" in log.read_text(), 15, 0.05, "the log reopened")
        drained_before = rotated.read_text().count("drained")
        assert wsup.cli("stop", "--name", wsup.name).returncode == 0
        # The workers reopened it too: what they log while draining for the stop is in the new file.
        text = log.read_text()
        assert "[worker 0/" in text and "[worker 1/" in text and text.count("drained") >= 2, text
        assert rotated.read_text().count("drained") == drained_before
    finally:
        follower.kill()
        follower.wait(timeout=10)
        reader.join(timeout=10)
        if follower.stdout is not None:
            follower.stdout.close()


def test_json_log_format(start_wsup: Callable[..., Instance], run_dir: Path) -> None:
    log = run_dir / "app.jsonl"
    wsup = start_wsup("app:asgi", "-i", "2", "--log-file", str(log), "--log-format", "json")
    wsup.wait_ready(2)
    only_one = wsup.cli("logs", "--name", wsup.name, "-n", "100", "--slot", "1")
    assert only_one.returncode == 0 and {orjson.loads(line)["slot"] for line in only_one.stdout.splitlines()} == {1}
    assert wsup.cli("stop", "--name", wsup.name).returncode == 0
    records = [orjson.loads(line) for line in log.read_text().splitlines()]
    workers = [r for r in records if r["source"] == "worker"]
    assert {r["slot"] for r in workers} == {0, 1} and all(r["generation"] >= 1 for r in workers)
    assert any(r["source"] == "supervisor" and "workers ready" in r["message"] for r in records)
    assert all({"ts", "level", "message", "pid"} <= set(r) for r in records)

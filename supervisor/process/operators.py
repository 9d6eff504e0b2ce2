"""What operators see of a running instance, wired to the supervisor (supervisor process): running totals per slot,
operation outcomes, the admin endpoint (metrics, health, status, dashboard) and systemd's notifications.

The supervisor calls four methods (``start``, ``observe``, ``ready``, ``stopping``); everything here only reads the
fleet, steering and operations, and owns its own tasks through the supervisor's ``TaskSupervisor``. Its collaborators
are handed in one by one (not the supervisor itself), so this module never imports ``supervisor.process.supervisor``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ipc.messages import Message, Report
from supervisor.admin_address import TOKEN_ENV
from supervisor.config import SupervisorConfig
from supervisor.process.admin import AdminServer
from supervisor.process.dashboard import DashboardFeed
from supervisor.process.fleet import Fleet
from supervisor.process.health import HealthFacts
from supervisor.process.host_drain import HostDrain
from supervisor.process.log_output import LogOutput
from supervisor.process.metrics import MetricsFacts, SlotFacts
from supervisor.process.operations import Operations
from supervisor.process.sd_notify import SystemdNotifier
from supervisor.process.slot_totals import SlotTotals
from supervisor.process.slots import WorkerHandle
from supervisor.process.tasks import TaskSupervisor
from supervisor.steering.controller import Steering

logger = logging.getLogger("wself.supervisor")
SAMPLE_S = 1.0  # totals and the dashboard's history are sampled this often (and at every scrape)


class Operators:
    def __init__(
        self,
        *,
        config: SupervisorConfig,
        info: dict[str, Any],
        fleet: Fleet,
        operations: Operations,
        steering: Steering,
        host_drain: HostDrain,
        tasks: TaskSupervisor,
        published: Callable[[], int],
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        """``info`` is the supervisor's own dict (this adds ``log`` and ``admin`` to it); ``published`` counts what
        the supervisor's publisher sent (``wsup publish``); ``snapshot`` builds the ``status --json`` document."""
        self.config = config
        self.info = info
        self.fleet = fleet
        self.operations = operations
        self.steering = steering
        self.host_drain = host_drain
        self.tasks = tasks
        self.published = published
        self._snapshot = snapshot
        self.totals = SlotTotals()
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (operation, outcome)
        self.systemd = SystemdNotifier.from_environment()
        os.environ.pop(TOKEN_ENV, None)  # read by the CLI already; the workers (the app's code) need not see it
        self.admin: AdminServer | None = None
        self.feed = DashboardFeed(self.dashboard_frame)
        self.log = LogOutput(config.worker.log_file, config.worker.log_format)

    # --- called by the supervisor ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Once the fleet exists: follow operations, open the admin endpoint, start the sampler and watchdog."""
        self.log.open()
        self.log.install(self.fleet.workers)
        self.info["log"] = {"file": self.log.path, "format": self.log.format}
        self.operations.observers.append(self._on_operation)
        address = self.config.admin_address
        if address is not None:
            self.admin = AdminServer(address, self.config.admin_token, self)
            await self.admin.open()
            self.info["admin"] = self.admin.url
            os.environ["WSUP_ADMIN_URL"] = self.admin.url  # workers inherit it: the demo page links the dashboard
            self.tasks.supervise("admin", self.admin.serve)
            self.tasks.supervise("dashboard", self.feed.run)
        if self.admin is not None or self.systemd.enabled:  # neither asked for: nothing to sample
            self.tasks.supervise("operators-sample", self._sample_forever)
        if self.systemd.watchdog_interval is not None:
            self.tasks.supervise("systemd-watchdog", self._watchdog)

    def observe(self, message: Message) -> None:
        """Every message from a worker, before the supervisor acts on it: reports feed the per-slot totals."""
        if isinstance(message, Report) and self.admin is not None:  # totals are folded by the admin's sampler
            worker = self.fleet.find(message.pid)
            known = worker is not None and worker.slot == message.slot and worker.generation == message.generation
            self.totals.observe(message, known)

    def ready(self) -> None:
        self.systemd.notify(READY=1, MAINPID=os.getpid(), STATUS=self.summary())

    def stopping(self) -> None:
        self.systemd.notify(STOPPING=1, STATUS="stopping: draining workers")

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()

    # --- followers --------------------------------------------------------------------------------------------
    def _on_operation(self, what: str, outcome: str | None) -> None:
        if outcome is None:
            if what == "reload":
                self.systemd.notify_reloading()
            return
        self.outcomes[(what, outcome)] += 1
        if what == "reload":
            self.systemd.notify(READY=1, STATUS=self.summary())

    async def _sample_forever(self) -> None:
        while True:
            if self.admin is not None:
                self.sample()
                self.feed.record()
            if self.systemd.enabled:
                self.systemd.notify(STATUS=self.summary())
            await asyncio.sleep(SAMPLE_S)

    async def _watchdog(self) -> None:
        interval = self.systemd.watchdog_interval
        assert interval is not None
        while True:  # sent from the supervisor's own loop: a blocked loop stops the pings and systemd acts
            self.systemd.notify(WATCHDOG=1)
            await asyncio.sleep(interval)

    # --- views ------------------------------------------------------------------------------------------------
    def sample(self) -> None:
        fleet = self.fleet
        self.totals.sample(fleet.workers(), fleet.slots)

    def summary(self) -> str:
        """systemd's one-line STATUS: "4/4 workers ready, 1,234 WebSockets, 56 HTTP"."""
        fleet = self.fleet
        ready = sum(1 for slot in fleet.slots if slot.worker is not None and slot.worker.state.value == "ready")
        http = websocket = 0
        for worker in fleet.workers():
            if worker.last_report is not None:
                http += worker.last_report.http
                websocket += worker.last_report.websocket
        operation = self.operations.running
        extra = f", {operation} in progress" if operation else ""
        return f"{ready}/{len(fleet.slots)} workers ready, {websocket:,} WebSockets, {http:,} HTTP{extra}"

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot()

    def health_facts(self) -> HealthFacts:
        fleet = self.fleet
        ready = sum(1 for slot in fleet.slots if slot.worker is not None and slot.worker.state.value == "ready")
        return HealthFacts(ready, len(fleet.slots), fleet.stopping, self.operations.running, self.host_drain.active)

    def metrics_facts(self) -> MetricsFacts:
        self.sample()
        fleet = self.fleet
        weights = list(self.steering.weights) if self.steering.mode == "least-conn" else []
        facts = MetricsFacts(totals=self.totals.totals(), replacements=self.totals.replacements())
        facts.operations = Counter(self.outcomes)
        facts.supervisor_published = self.published()
        if self.steering.shared_queue:  # only least-conn has one; a fallback to the hash sets its weight to 0
            facts.shared_weight = self.steering.shared_weight
        for slot in fleet.slots:
            facts.slots[slot.index] = SlotFacts(weight=weights[slot.index] if slot.index < len(weights) else None)
        for worker in fleet.workers():
            facts.workers_by_state[worker.state.value] += 1
            slot_facts = facts.slots.setdefault(worker.slot, SlotFacts())
            report = worker.last_report
            if report is not None:
                slot_facts.http += report.http
                slot_facts.websocket += report.websocket
        for index, rss in self.totals.rss().items():
            facts.slots.setdefault(index, SlotFacts()).rss_bytes = rss
        for slot in fleet.slots:
            serving = slot.worker
            if serving is not None and serving.last_report is not None:
                facts.slots[slot.index].loop_lag_s = serving.last_report.loop_lag_ms / 1000
        return facts

    def dashboard_frame(self) -> dict[str, Any]:
        """The compact document the dashboard redraws from, a few times a second."""
        fleet = self.fleet
        weights = list(self.steering.weights) if self.steering.mode == "least-conn" else []
        totals = self.totals.totals()

        def row(worker: WorkerHandle, role: str) -> dict[str, Any]:
            report = worker.last_report
            return {
                "slot": worker.slot,
                "pid": worker.pid,
                "gen": worker.generation,
                "state": worker.state.value,
                "role": role,
                "http": report.http if report else 0,
                "ws": report.websocket if report else 0,
                "lag_ms": round(report.loop_lag_ms, 1) if report else 0.0,
            }

        slots = []
        for slot in fleet.slots:
            entry: dict[str, Any] = {
                "slot": slot.index,
                "weight": weights[slot.index] if slot.index < len(weights) else None,
                "requests": int(totals.get(slot.index, Counter()).get("requests", 0)),
                "restarts": slot.restarts,
                "worker": row(slot.worker, "serving") if slot.worker is not None else None,
            }
            slots.append(entry)
        bus: Counter[str] = sum(totals.values(), Counter())
        bus["bus.published"] += self.published()  # `wsup publish` goes through the supervisor's own publisher
        return {
            "t": round(time.time(), 2),  # the page's clock for its chart (the browser's may be off)
            "name": self.info.get("name"),
            "app": self.info.get("app"),
            "address": self.info.get("address"),
            "operation": self.operations.running,
            "stopping": fleet.stopping,
            "balance": self.steering.mode,
            "slots": slots,
            "draining": [row(entry.worker, "draining") for entry in fleet.draining],
            "starting": [row(worker, "starting") for worker in fleet.candidates()],
            "bus": {key[4:]: int(value) for key, value in bus.items() if key.startswith("bus.")},
            "reloads": {outcome: n for (what, outcome), n in self.outcomes.items() if what == "reload"},
        }

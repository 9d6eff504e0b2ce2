"""What operators see of a running instance, wired to the supervisor (supervisor process): running totals per slot,
operation outcomes, the admin endpoint (metrics, health, status, dashboard) and systemd's notifications.

The supervisor calls four methods (``start``, ``observe``, ``ready``, ``stopping``); everything here only reads the
fleet, steering and operations, and owns its own tasks through the supervisor's ``TaskSupervisor``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ipc.messages import Message, Report
from supervisor.admin_address import TOKEN_ENV
from supervisor.process.admin import AdminServer
from supervisor.process.dashboard import DashboardFeed
from supervisor.process.health import HealthFacts
from supervisor.process.log_output import LogOutput
from supervisor.process.metrics import MetricsFacts, SlotFacts
from supervisor.process.sd_notify import SystemdNotifier
from supervisor.process.slot_totals import SlotTotals

if TYPE_CHECKING:  # the supervisor hands itself in; this module only reads it
    from supervisor.process.supervisor import Supervisor

logger = logging.getLogger("wsup.supervisor")
SAMPLE_S = 1.0  # totals and the dashboard's history are sampled this often (and at every scrape)


class Operators:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.totals = SlotTotals()
        self.operations: Counter[tuple[str, str]] = Counter()
        self.systemd = SystemdNotifier.from_environment()
        os.environ.pop(TOKEN_ENV, None)  # read by the CLI already; the workers (the app's code) need not see it
        self.admin: AdminServer | None = None
        self.feed = DashboardFeed(self.dashboard_frame)
        self.log = LogOutput(supervisor.config.worker.log_file, supervisor.config.worker.log_format)

    # --- called by the supervisor ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Once the fleet exists: follow operations, open the admin endpoint, start the sampler and watchdog."""
        sup = self.sup
        self.log.open()
        self.log.install(sup.fleet.workers)
        sup.info["log"] = {"file": self.log.path, "format": self.log.format}
        sup.operations.observers.append(self._on_operation)
        address = sup.config.admin_address
        if address is not None:
            self.admin = AdminServer(address, sup.config.admin_token, self)
            await self.admin.open()
            sup.info["admin"] = self.admin.url
            os.environ["WSUP_ADMIN_URL"] = self.admin.url  # workers inherit it: the demo page links the dashboard
            sup.tasks.supervise("admin", self.admin.serve)
            sup.tasks.supervise("dashboard", self.feed.run)
        if self.admin is not None or self.systemd.enabled:  # neither asked for: nothing to sample
            sup.tasks.supervise("operators-sample", self._sample_forever)
        if self.systemd.watchdog_interval is not None:
            sup.tasks.supervise("systemd-watchdog", self._watchdog)

    def observe(self, message: Message) -> None:
        """Every message from a worker, before the supervisor acts on it: reports feed the per-slot totals."""
        if isinstance(message, Report) and self.admin is not None:  # totals are folded by the admin's sampler
            worker = self.sup.fleet.find(message.pid)
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
        self.operations[(what, outcome)] += 1
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
        fleet = self.sup.fleet
        self.totals.sample(fleet.workers(), fleet.slots)

    def summary(self) -> str:
        """systemd's one-line STATUS: "4/4 workers ready, 1,234 WebSockets, 56 HTTP"."""
        fleet = self.sup.fleet
        ready = sum(1 for slot in fleet.slots if slot.worker is not None and slot.worker.state.value == "ready")
        http = websocket = 0
        for worker in fleet.workers():
            if worker.last_report is not None:
                http += worker.last_report.http
                websocket += worker.last_report.websocket
        operation = self.sup.operations.running
        extra = f", {operation} in progress" if operation else ""
        return f"{ready}/{len(fleet.slots)} workers ready, {websocket:,} WebSockets, {http:,} HTTP{extra}"

    def snapshot(self) -> dict[str, Any]:
        return self.sup.snapshot()

    def health_facts(self) -> HealthFacts:
        fleet = self.sup.fleet
        ready = sum(1 for slot in fleet.slots if slot.worker is not None and slot.worker.state.value == "ready")
        return HealthFacts(
            ready, len(fleet.slots), fleet.stopping, self.sup.operations.running, self.sup.host_drain.active
        )

    def metrics_facts(self) -> MetricsFacts:
        self.sample()
        sup, fleet = self.sup, self.sup.fleet
        weights = list(sup.steering.weights) if sup.steering.mode == "least-conn" else []
        facts = MetricsFacts(totals=self.totals.totals(), replacements=self.totals.replacements())
        facts.operations = Counter(self.operations)
        facts.supervisor_published = sup.bus.published
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
        sup, fleet = self.sup, self.sup.fleet
        weights = list(sup.steering.weights) if sup.steering.mode == "least-conn" else []
        totals = self.totals.totals()

        def row(worker: Any, role: str) -> dict[str, Any]:
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
        bus["bus.published"] += sup.bus.published  # `wsup publish` goes through the supervisor's own publisher
        return {
            "t": round(time.time(), 2),  # the page's clock for its chart (the browser's may be off)
            "name": sup.info.get("name"),
            "app": sup.info.get("app"),
            "address": sup.info.get("address"),
            "operation": sup.operations.running,
            "stopping": fleet.stopping,
            "balance": sup.steering.mode,
            "slots": slots,
            "draining": [row(entry.worker, "draining") for entry in fleet.draining],
            "starting": [row(worker, "starting") for worker in fleet.candidates()],
            "bus": {key[4:]: int(value) for key, value in bus.items() if key.startswith("bus.")},
            "reloads": {outcome: n for (what, outcome), n in self.operations.items() if what == "reload"},
        }

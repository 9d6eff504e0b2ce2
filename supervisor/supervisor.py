"""The supervisor process: owns the listening sockets, the workers, the ZeroMQ endpoints and the steering program.

It reconciles toward a target (every slot up to the target count has a ready worker), replaces workers that exit
or whose event loop goes silent, and answers control requests. Signal handlers only enqueue work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ipc.bus_proxy import BusProxy
from ipc.control import ControlServer, ProgressSink
from ipc.endpoints import InstanceLock, InstancePaths
from ipc.errors import StartupError, WsupError
from ipc.messages import Failed, JSONObject, Ready, Request
from ipc.stats import StatsReceiver
from supervisor.arrivals import ArrivalWatch
from supervisor.config import SupervisorConfig
from supervisor.control_commands import ControlCommands
from supervisor.listeners import ListenerGroup, resolve
from supervisor.rollout import Rollouts
from supervisor.slot_loads import slot_loads
from supervisor.slots import Slot
from supervisor.steering import Steering
from supervisor.worker_process import WorkerProcess, WorkerStartError, WorkerState
from supervisor.worker_spec import WorkerSpec

logger = logging.getLogger("wsup.supervisor")
TICK_S = 0.1


class Supervisor:
    def __init__(self, config: SupervisorConfig, paths: InstancePaths) -> None:
        self.config = config
        self.paths = paths
        self.slots: list[Slot] = []
        self.target = config.workers
        self.workers: dict[int, WorkerProcess] = {}  # by pid: every live worker, serving or draining
        self.retiring: list[WorkerProcess] = []  # replaced or scaled-down workers that are draining
        self.generation = 0
        self.stopping = False
        self.started_at = time.time()
        self.steering = Steering(config.balance)
        self.arrivals = ArrivalWatch(lambda: self.steer_and_watch())
        self.listeners: ListenerGroup | None = None
        self.unknown_reports = 0
        self.reload_floor: int | None = None  # during a reload: the first generation that counts as replaced
        self._stop_requested = asyncio.Event()
        self.rollouts = Rollouts(self)
        # Set in run(), before any control request can arrive.
        self.stats_receiver: StatsReceiver | None = None
        self.control_server: ControlServer | None = None
        self.bus: BusProxy | None = None
        self.commands = ControlCommands(self)
        self._tasks: list[asyncio.Task[Any]] = []
        self.info: dict[str, Any] = {"name": paths.name, "app": config.app}

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, on_ready: Callable[[dict[str, Any]], None]) -> None:
        lock = InstanceLock(self.paths)
        context = zmq.asyncio.Context()
        stats: StatsReceiver | None = None
        control: ControlServer | None = None
        bus: BusProxy | None = None
        try:
            self.listeners = ListenerGroup.open(
                resolve(self.config.host, self.config.port), self.config.workers, self.config.backlog
            )
            address = self.listeners.address
            self.info.update(address=address.url, host=address.host, port=address.port)
            stats = StatsReceiver(context, self.paths.stats)
            control = ControlServer(context, self.paths.control, self.handle_request)
            self.stats_receiver, self.control_server = stats, control
            bus = self.bus = BusProxy(self.paths.bus_in, self.paths.bus_out, max_bytes=self.config.bus_max_bytes)
            await bus.start()
            lock.write_info({**self.info, "pid": os.getpid(), "started_at": self.started_at})
            self._install_signal_handlers()
            self._tasks.append(asyncio.create_task(self._pump_stats(stats)))
            self._tasks.append(asyncio.create_task(control.serve()))
            await self._start_first_generation()
            self._tasks.append(asyncio.create_task(self._tick_forever()))
            on_ready({**self.info, "workers": [slot.worker.pid for slot in self.slots if slot.worker]})
            await self._stop_requested.wait()
            logger.info("stopping: draining %d workers", len(self.workers))
            await self.stop_all_workers()
        finally:
            self.stopping = True
            self.arrivals.disarm()
            for task in self._tasks:
                task.cancel()
            for worker in list(self.workers.values()):
                worker.kill_tree()
            if control is not None:
                control.close()
            if stats is not None:
                stats.close()
            if bus is not None:
                bus.close()
            context.destroy(linger=0)
            if self.listeners is not None:
                self.listeners.close()
            lock.release()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def request_stop(self) -> None:
        self.stopping = True
        self._stop_requested.set()

    def request_reload(self) -> None:
        """SIGHUP: the same rolling reload as `wsup reload`, with its progress in the log."""
        logger.info("SIGHUP: reloading")
        self._tasks.append(asyncio.create_task(self._reload_from_signal()))

    async def _reload_from_signal(self) -> None:
        try:
            await self.rollouts.reload(lambda event: None)
        except WsupError as exc:
            logger.error("SIGHUP reload: %s", exc)

    async def _start_first_generation(self) -> None:
        for index in range(self.target):
            self.slots.append(Slot(index))
            self.spawn(self.slots[index])
        results = await asyncio.gather(
            *(slot.worker.wait_ready(self.config.ready_timeout) for slot in self.slots if slot.worker),
            return_exceptions=True,
        )
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failures:
            index, error = failures[0]
            self.stopping = True
            for worker in list(self.workers.values()):
                worker.kill_tree()
            await asyncio.gather(*(w.exited for w in list(self.workers.values())), return_exceptions=True)
            raise StartupError(f"worker {index} failed to start: {error}")
        self.steer_and_watch(force=True)
        logger.info("%d workers ready on %s (%s)", self.target, self.info["address"], self.steering.mode)

    async def stop_all_workers(self) -> None:
        self.stopping = True
        workers = list(self.workers.values())
        await asyncio.gather(
            *(w.stop(signal.SIGTERM, self.config.graceful_timeout) for w in workers), return_exceptions=True
        )

    # --- workers ------------------------------------------------------------------------------------------
    def spawn(self, slot: Slot, *, assign: bool = True) -> WorkerProcess:
        """Start a worker on ``slot``'s socket. ``assign=False`` starts a candidate that a reload swaps in later."""
        assert self.listeners is not None
        self.generation += 1
        spec = WorkerSpec(
            app=self.config.app,
            factory=self.config.factory,
            app_dir=self.config.app_dir,
            fd=self.listeners.fileno(slot.index),
            slot=slot.index,
            generation=self.generation,
            supervisor_pid=os.getpid(),
            stats_endpoint=self.paths.stats,
            bus_in=self.paths.bus_in,
            bus_out=self.paths.bus_out,
            log_level=self.config.log_level,
            access_log=self.config.access_log,
            timeout_keep_alive=self.config.timeout_keep_alive,
            graceful_timeout=self.config.graceful_timeout,
            ws_drain_window=self.config.ws_drain_window,
            bus_queue=self.config.bus_queue,
            bus_policy=self.config.bus_policy,
            bus_max_bytes=self.config.bus_max_bytes,
            bus_coalesce_ms=self.config.bus_coalesce_ms,
        )
        worker = WorkerProcess.spawn(spec)
        if slot.spawned:
            slot.restarts += 1
        slot.spawned += 1
        if assign:
            slot.worker = worker
        self.workers[worker.pid] = worker
        self._tasks.append(asyncio.create_task(self._watch(worker, slot)))
        logger.info("slot %d: started worker %d (generation %d)", slot.index, worker.pid, spec.generation)
        return worker

    async def _watch(self, worker: WorkerProcess, slot: Slot) -> None:
        """Follow one worker from start to exit; replace it (with backoff) if it dies while it is needed."""
        try:
            await worker.wait_ready(self.config.ready_timeout)
        except WorkerStartError as exc:
            if not self.stopping:
                logger.error("slot %d: worker %d failed to start: %s", slot.index, worker.pid, exc)
            worker.error = worker.error or str(exc)
            worker.kill_tree()
        code = await worker.exited
        self.workers.pop(worker.pid, None)
        if worker in self.retiring:
            self.retiring.remove(worker)
        if slot.worker is not worker:
            return
        slot.worker = None
        if self.stopping or slot.retiring:
            return
        now = time.monotonic()
        ready_for = now - worker.ready_at if worker.ready_at is not None else None
        delay = slot.record_exit(now, ready_for, worker.error or f"worker exited with code {code}")
        log = logger.error if slot.crash_loop else logger.warning
        log(
            "slot %d: worker %d exited with code %s; restarting in %.2fs%s",
            slot.index,
            worker.pid,
            code,
            delay,
            " (crash loop)" if slot.crash_loop else "",
        )
        self.steer(force=True)

    async def _pump_stats(self, stats: StatsReceiver) -> None:
        while True:
            message = await stats.receive()
            worker = self.workers.get(message.pid)
            if worker is None:
                self.unknown_reports += 1
                continue
            if isinstance(message, Ready):
                worker.on_ready()
                self.steer(force=True)
            elif isinstance(message, Failed):
                worker.on_failed(message.error)
            else:
                worker.on_report(message)
                self.steer()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.reconcile()

    def reconcile(self) -> None:
        """Close the gap between what runs and what should: respawn empty slots, kill silent workers."""
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots[: self.target]:
            if slot.worker is None and not slot.retiring and now >= slot.next_start_at:
                self.spawn(slot)
            worker = slot.worker
            if (
                worker is not None
                and worker.state is WorkerState.READY
                and worker.report_age() > self.config.heartbeat_timeout
            ):
                logger.error(
                    "slot %d: worker %d sent no heartbeat for %.1fs (event loop blocked?): killing it",
                    slot.index,
                    worker.pid,
                    worker.report_age(),
                )
                worker.error = f"no heartbeat for {worker.report_age():.1f}s"
                worker.kill_tree()
        self.steer()

    # --- steering -----------------------------------------------------------------------------------------
    def steer(self, *, force: bool = False, min_interval: float | None = None) -> None:
        if self.listeners is None or not self.slots or self.steering.mode != "least-conn":
            return
        returning = None
        if self.reload_floor is not None:
            # Clients of the draining workers will reconnect: fill each replaced worker towards its final share.
            # Their shared counts, like the slots' own: a report lags, and a client that has already come back
            # would count twice, lifting the share of every slot (traced: the last slot ended ~4 short of 100).
            returning = float(sum(w.live_connections() for w in self.retiring))
        self.steering.update(
            self.listeners.sockets, slot_loads(self), force=force, returning=returning, min_interval=min_interval
        )

    def steer_and_watch(self, *, force: bool = False) -> None:
        """Plan now, and watch for the next arrival from ``next_check`` on (see supervisor.arrivals)."""
        if self.stopping or self.listeners is None:
            return
        self.steer(force=force, min_interval=0.0)
        if self.steering.mode == "least-conn":
            listeners = self.listeners
            self.arrivals.arm_later(self.steering.next_check(), lambda: listeners.sockets)

    # --- control ------------------------------------------------------------------------------------------
    async def handle_request(self, request: Request, progress: ProgressSink) -> JSONObject:
        return await self.commands.handle(request, progress)

"""The supervisor process: opens what the instance owns (its name's lock, the listening sockets, the ZeroMQ
endpoints), runs the fleet and steering under supervised tasks, and closes it all in reverse order.

Signal handlers only enqueue: SIGHUP becomes the same ``reload`` request as `wsup reload`, SIGTERM and SIGINT the
same ``stop`` as `wsup stop`, and one task runs them through the control commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from ipc.bus_proxy import BusProxy
from ipc.control import ControlServer
from ipc.endpoints import InstanceLock, InstancePaths
from ipc.errors import WsupError
from ipc.locator import Locator
from ipc.messages import Failed, Ready, Request
from ipc.settings import WorkerSpec
from ipc.stats import StatsReceiver
from supervisor.config import SupervisorConfig
from supervisor.process.agent_check import AgentServer, HostLoad
from supervisor.process.control_commands import ControlCommands
from supervisor.process.fleet import Fleet, FleetTiming
from supervisor.process.host_drain import HostDrain
from supervisor.process.limits import describe_limits, raise_open_files_limit
from supervisor.process.listeners import ListenerGroup, resolve
from supervisor.process.operations import Operations
from supervisor.process.operators import Operators
from supervisor.process.peer_counts import PeerCounts
from supervisor.process.recycle_policy import Limits
from supervisor.process.recycler import Recycler
from supervisor.process.slots import WorkerHandle
from supervisor.process.status import build_status
from supervisor.process.steering_loop import SteeringLoop
from supervisor.process.tasks import TaskSupervisor
from supervisor.process.worker_process import WorkerProcess
from supervisor.process.worker_state import WorkerState
from supervisor.steering.controller import Steering

if TYPE_CHECKING:
    from supervisor.process.bridge import Bridge

logger = logging.getLogger("wsup.supervisor")
_SIGNAL_REQUESTS = {signal.SIGTERM: "stop", signal.SIGINT: "stop", signal.SIGHUP: "reload"}


class Supervisor:
    def __init__(self, config: SupervisorConfig, paths: InstancePaths) -> None:
        self.config = config
        self.paths = paths
        self.started_at = time.time()
        self.info: dict[str, Any] = {"name": paths.name, "app": config.app}
        self.tasks = TaskSupervisor()
        self.steering = Steering(config.balance)
        self.unknown_reports = 0
        self._stop_requested = asyncio.Event()
        self._signals: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self.signals_dropped = 0
        self.bridge: Bridge | None = None
        self.agent: AgentServer | None = None

    async def run(self, on_ready: Callable[[dict[str, Any]], None]) -> None:
        config, paths = self.config, self.paths
        open_files = raise_open_files_limit()
        logger.debug("open files limit: %d per process", open_files)
        async with contextlib.AsyncExitStack() as stack:
            # The name in the abstract namespace first: it is there even when the run directory was deleted
            # under a running instance, so a second one of the same name cannot start beside it.
            found_by = Locator.claim(paths.name, paths.directory)
            stack.callback(found_by.close)
            lock = InstanceLock(paths)
            stack.callback(lock.release)
            context = zmq.asyncio.Context()
            stack.callback(context.destroy, 0)
            shared = self.steering.shared_queue = config.shared_queue and self.steering.mode == "least-conn"
            where = resolve(config.host, config.port)
            self.listeners = ListenerGroup.open(where, config.workers, config.backlog, shared_queue=shared)
            stack.callback(self.listeners.close)
            address = self.listeners.address
            url = address.url.replace("http://", "https://", 1) if config.worker.uses_tls else address.url
            self.info.update(address=url, host=address.host, port=address.port)
            self.stats = StatsReceiver(context, paths.stats)
            stack.callback(self.stats.close)
            self.bus = BusProxy(paths.bus_in, paths.bus_out, max_bytes=config.worker.bus_max_bytes)
            stack.callback(self.bus.close)
            await self.bus.start()
            self.fleet = Fleet(
                self._launch,
                self.listeners,
                FleetTiming(config.ready_timeout, config.heartbeat_timeout, config.worker.graceful_timeout),
                # The loop is made next, before the fleet's first pass can call either.
                on_change=lambda: self.steering_loop.plan_and_watch(force=True),
                before_close=lambda: self.steering_loop.arrivals.disarm(),
            )
            self.steering_loop = SteeringLoop(self.steering, self.fleet, self.listeners, config.stall_after)
            stack.callback(self._kill_leftovers)
            heard = self._balancer_heard if config.agent_address is not None else None
            self.host_drain = HostDrain(self._serving, config.worker.ws_drain_window, self.tasks.spawn, heard)
            await self._open_multihost(context, stack)
            self.operations = Operations(self.fleet, config.reload_batch)
            self.recycler = Recycler(
                self.fleet, self.operations, _limits(config), concurrency=config.recycle_concurrency
            )
            self.commands = ControlCommands(
                operations=self.operations,
                bus=self.bus,
                snapshot=self.snapshot,
                request_stop=self.request_stop,
                worker_pids=lambda: [w.pid for w in self.fleet.workers()],
                graceful_timeout=config.graceful_timeout,
                host_drain=self.host_drain,
            )
            self.control = ControlServer(context, paths.control, self.commands.handle)
            stack.callback(self.control.close)
            stack.push_async_callback(self.tasks.aclose)
            stack.callback(self.steering_loop.close)
            # What operators see (metrics, health, dashboard, systemd): reads only; see supervisor.process.operators.
            self.operators = Operators(
                config=config,
                info=self.info,
                fleet=self.fleet,
                operations=self.operations,
                steering=self.steering,
                host_drain=self.host_drain,
                tasks=self.tasks,
                published=lambda: self.bus.published,
                snapshot=self.snapshot,
            )
            stack.callback(self.operators.close)
            await self.operators.start()
            lock.write_info({**self.info, "pid": os.getpid(), "started_at": self.started_at})
            self._install_signal_handlers()
            self.tasks.supervise("reconcile", self.fleet.run)
            self.tasks.supervise("stats", self._pump_stats)
            self.tasks.supervise("control", self.control.serve)
            self.tasks.supervise("signals", self._run_signals)
            if config.recycles:
                self.tasks.supervise("recycle", self.recycler.run)
            self._supervise_multihost()
            self.tasks.supervise("locator", found_by.serve)
            try:
                await self.fleet.start(config.workers)
                logger.info("%d workers ready on %s (%s)", config.workers, address.url, self.steering.mode)
                on_ready({**self.info, "workers": [s.worker.pid for s in self.fleet.slots if s.worker]})
                self.operators.ready()
                await self._stop_requested.wait()
                self.operators.stopping()
                logger.info("stopping: draining %d workers", len(list(self.fleet.workers())))
            finally:
                await self.fleet.stop()

    def _launch(self, slot: int, generation: int) -> WorkerProcess:
        spec = WorkerSpec(
            settings=self.config.worker,
            fd=self.listeners.fileno(slot),
            shared_fd=self.listeners.shared_fileno,
            slot=slot,
            generation=generation,
            supervisor_pid=os.getpid(),
            stats_endpoint=self.paths.stats,
            bus_in=self.paths.bus_in,
            bus_out=self.paths.bus_out,
        )
        return WorkerProcess.spawn(spec, self.config.worker.ssl_keyfile_password)

    # --- several hosts: the bus bridge and the agent-check ------------------------------------------------
    async def _open_multihost(self, context: zmq.asyncio.Context, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        address = config.bridge_address
        if address is not None:
            from supervisor.process.bridge import Bridge  # only instances with a bridge load its code

            self.bridge = Bridge(
                context,
                self.paths.bus_in,
                self.paths.bus_out,
                address=address,
                prefix=config.channel_prefix,
                max_bytes=config.worker.bus_max_bytes,
            )
            stack.callback(self.bridge.close)
        agent_address = config.agent_address
        if agent_address is not None:
            self.peers = PeerCounts(self.listeners.address.port, self.listeners.address.host)
            self.agent = AgentServer(*agent_address, load=self._host_load)
            await self.agent.open()
            stack.callback(self.agent.close)

    def _supervise_multihost(self) -> None:
        bridge = self.bridge
        if bridge is not None:
            from supervisor.process.bridge_redis import RedisLink  # redis is an optional dependency (wsup[redis])

            self.tasks.supervise("bridge-interest", bridge.watch_subscriptions)
            self.tasks.supervise("bridge-out", bridge.pump_out)
            self.tasks.supervise("bridge-redis", RedisLink(bridge).run)
        if self.agent is not None:
            self.tasks.supervise("agent", self.agent.serve)

    async def _balancer_heard(self, timeout: float) -> bool:
        return await self.agent.drain_heard(timeout) if self.agent is not None else False

    def _serving(self) -> list[WorkerHandle]:
        return [slot.worker for slot in self.fleet.slots if slot.worker is not None]

    def _host_load(self, balancer: str) -> HostLoad:
        fleet = self.fleet
        ready = sum(1 for worker in self._serving() if worker.state is WorkerState.READY)
        connections = sum(worker.live_connections() for worker in fleet.workers())
        seen = self.peers.from_peer(balancer)
        return HostLoad(len(fleet.slots), ready, connections, self.host_drain.active, fleet.stopping, seen)

    def _kill_leftovers(self) -> None:
        """The last resort on the way out (the stop already drained them): no worker outlives its supervisor."""
        for worker in self.fleet.workers():
            worker.kill_tree()

    # --- signals: handlers only enqueue ---------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, cmd in _SIGNAL_REQUESTS.items():
            loop.add_signal_handler(sig, self._enqueue_signal, cmd)

    def _enqueue_signal(self, cmd: str) -> None:
        try:
            self._signals.put_nowait(cmd)
        except asyncio.QueueFull:
            self.signals_dropped += 1  # 64 signals not yet handled: one more of the same changes nothing

    async def _run_signals(self) -> None:
        while True:
            cmd = await self._signals.get()
            logger.info("signal: %s", cmd)
            # The same request the CLI sends, through the same commands; a reload runs beside later signals.
            request = Request(id=f"signal-{cmd}", cmd=cmd, args={})
            self.tasks.spawn(f"signal-{cmd}", self._handle_quietly(request))

    async def _handle_quietly(self, request: Request) -> None:
        try:
            await self.commands.handle(request, lambda event: None)
        except WsupError as exc:
            logger.error("%s: %s", request.cmd, exc)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def snapshot(self) -> dict[str, Any]:
        """The ``status --json`` document."""
        fleet = self.fleet
        return build_status(
            info={
                **self.info,
                "operation": self.operations.running,
                "stopping": fleet.stopping,
                "limits": describe_limits(self.config.backlog),
                "recycling": self.recycler.describe(),
                "host_drain": self.host_drain.describe(),
                "bridge": self.bridge.describe() if self.bridge is not None else None,
                "agent": self.agent.describe() if self.agent is not None else None,
            },
            fleet=fleet,
            balance=self.steering.describe(),
            ipc={
                "malformed_stats": self.stats.malformed,
                "malformed_control": self.control.malformed,
                "unknown_reports": self.unknown_reports,
                "dropped_reports": sum(w.last_report.dropped_reports for w in fleet.workers() if w.last_report),
                "published_by_supervisor": self.bus.published,
            },
            started_at=self.started_at,
            errors=self.tasks.errors.describe(),
        )

    # --- worker messages ----------------------------------------------------------------------------------
    async def _pump_stats(self) -> None:
        while True:
            message = await self.stats.receive()
            self.operators.observe(message)
            worker = self.fleet.find(message.pid)
            if worker is None or worker.slot != message.slot or worker.generation != message.generation:
                self.unknown_reports += 1
                continue
            if isinstance(message, Ready):
                worker.on_ready()
                self.fleet.wake()
                self.steering_loop.steer(force=True)
            elif isinstance(message, Failed):
                worker.on_failed(message.error)
                self.fleet.wake()
            else:
                self.steering_loop.on_report(worker, message)


def _limits(config: SupervisorConfig) -> Limits:
    return Limits(
        config.max_requests, config.max_requests_jitter, config.max_lifetime, config.max_lifetime_jitter,
        config.max_memory,
    )  # fmt: skip

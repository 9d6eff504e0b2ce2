"""The worker bootstrap: runs inside each worker process, serves the user's app with uvicorn on the slot's socket.

Started by the supervisor as ``python -m supervisor.worker SPEC_JSON``: a fresh interpreter, so a reload picks up
new code. It drains on the signals of ``ipc.signals`` (1012 when replaced, 1001 when the instance stops).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvicorn
import uvloop

from ipc import broadcast
from ipc.bus_queue import Policy
from ipc.bus_worker import WorkerBus
from ipc.counters import ConnectionCounters, beat, local_cells, move_window
from ipc.errors import AppLoadError
from ipc.settings import PASSWORD_ENV, WorkerSpec
from ipc.signals import (
    CLOSE_CODE_FOR,
    CLOSE_GOING_AWAY,
    CLOSE_SERVICE_RESTART,
    IGNORED_BY_WORKERS,
    MOVE_WEBSOCKETS,
    REOPEN_WORKER_LOG,
)
from ipc.stats import Counts, StatsReporter
from supervisor.worker.app_loader import load_app
from supervisor.worker.clock import WorkerClock
from supervisor.worker.drain import WebSocketMover, drain, drain_window
from supervisor.worker.http_limits import HttpLimits, automatic_max_connections
from supervisor.worker.process_setup import (
    EXIT_STARTUP_FAILED,
    LastErrorHandler,
    die_with_supervisor,
    load_env_file,
    logging_config,
    reopen_log,
)
from supervisor.worker.protocols import listening_address, protocol_classes
from supervisor.worker.worker_connections import WorkerConnections

logger = logging.getLogger("wsup.worker")


class Worker:
    """One worker process: the uvicorn server, its reporter, and the drain on a signal."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        # The page the supervisor reads this worker's live connection counts from (private memory without one).
        shared = ConnectionCounters.attach(spec.counters_fd).cells if spec.counters_fd >= 0 else None
        settings = spec.settings
        limits = HttpLimits(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            idle_timeout=settings.idle_timeout,
            max_connections=settings.max_connections or automatic_max_connections(),
        )
        self.connections = WorkerConnections(shared, limits)
        self.shared = shared if shared is not None else local_cells()
        self.mover = WebSocketMover()
        self.close_code = CLOSE_GOING_AWAY
        # Taken out of the environment before the app is imported: the app has no business reading it.
        self.key_password = os.environ.pop(PASSWORD_ENV, None)
        self.server: uvicorn.Server | None = None
        self.bus: WorkerBus | None = None
        self.reporter = StatsReporter(
            spec.stats_endpoint,
            pid=os.getpid(),
            slot=spec.slot,
            generation=spec.generation,
            snapshot=self.counts,
            bus_counters=lambda: self.bus.describe() if self.bus is not None else {},
            close_codes=self.connections.describe_closes,
            http_limits=self.connections.guard.describe,
            heartbeat=functools.partial(beat, self.shared),
        )

    def counts(self) -> Counts:
        server = self.server
        if server is None:
            return Counts(0, 0, 0, 0, 0, False)
        state = server.server_state
        counts = self.connections
        websocket = counts.websocket_live
        return Counts(
            http=len(state.connections) - websocket,
            websocket=websocket,
            # WebSocket sessions run as tasks too; what is left are HTTP requests in progress.
            in_flight=max(0, len(state.tasks) - websocket),
            requests=state.total_requests,
            websocket_sessions=counts.websocket_opened,
            draining=counts.draining,
        )

    def _on_signal(self, close_code: int) -> None:
        self.close_code = close_code
        if self.server is not None:
            self.server.should_exit = True
            # Stop accepting now, not at uvicorn's next tick (0.1 s, more under load), and say so at once: the
            # supervisor sends the slot's new worker, which shares this socket, no connection until then
            # (supervisor.process.slot_loads, handover). The drain that follows closes them again: a no-op.
            for asyncio_server in self.server.servers:
                asyncio_server.close()
            self.connections.draining = True
            self.reporter.send_report(self.counts(), 0.0)

    def _on_move(self) -> None:
        """MOVE_WEBSOCKETS: the window (or a cancel) is in the page the supervisor shares with this worker."""
        window = move_window(self.shared)
        if window is None:
            self.mover.cancel()
        elif self.server is not None and not self.server.should_exit:
            self.mover.move(self.server, CLOSE_SERVICE_RESTART, window)

    async def serve(self, app: Any) -> None:
        spec, settings = self.spec, self.spec.settings
        loop = asyncio.get_running_loop()
        for sig, close_code in CLOSE_CODE_FOR.items():
            loop.add_signal_handler(sig, self._on_signal, close_code)
        loop.add_signal_handler(MOVE_WEBSOCKETS, self._on_move)
        http_protocol, websocket_protocol = protocol_classes(self.connections)
        config = uvicorn.Config(
            app,
            http=http_protocol,
            ws=websocket_protocol,
            lifespan="auto",
            log_config=logging_config(spec),
            log_level=settings.log_level,
            access_log=settings.access_log,
            timeout_keep_alive=int(settings.timeout_keep_alive),
            # uvicorn's own options, with its names and meanings. TLS: Server.startup wraps the sockets it is given
            # with config.ssl, and the files are read now, so a reload picks up a renewed certificate.
            ssl_keyfile=settings.ssl_keyfile,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile_password=self.key_password,
            ssl_ca_certs=settings.ssl_ca_certs,
            proxy_headers=settings.proxy_headers,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            root_path=settings.root_path,
            ws_max_size=settings.ws_max_size,
            ws_ping_interval=settings.ws_ping_interval,
            ws_ping_timeout=settings.ws_ping_timeout,
            ws_per_message_deflate=settings.ws_per_message_deflate,
            limit_concurrency=settings.limit_concurrency,
            headers=settings.headers(),
        )
        config.load()
        server = self.server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        errors = LastErrorHandler()
        logging.getLogger("uvicorn.error").addHandler(errors)
        listeners = [socket.socket(fileno=spec.fd)]
        if spec.shared_fd >= 0:  # the queue every worker accepts from (supervisor.process.listeners)
            listeners.append(socket.socket(fileno=spec.shared_fd))
        self.connections.local_address = listening_address(listeners)
        # The bus is up before the app's lifespan starts, so startup code and every handler can publish.
        bus = self.bus = WorkerBus(
            spec.bus_in,
            spec.bus_out,
            queue=settings.bus_queue,
            policy=Policy.parse(settings.bus_policy),
            max_bytes=settings.bus_max_bytes,
            coalesce_s=settings.bus_coalesce_ms / 1000,
        )
        await bus.start()
        broadcast.install(bus)
        try:
            await server.startup(sockets=listeners)
        except SystemExit:
            raise AppLoadError(f"lifespan startup failed: {errors.last or 'see the worker log'}") from None
        finally:
            logging.getLogger("uvicorn.error").removeHandler(errors)
        # A drain signal during startup still goes through the drain below: the socket may have accepted already.
        self.reporter.send_ready()
        if spec.log_fd >= 0:
            sys.stderr.flush()
            os.dup2(spec.log_fd, 2)
            os.close(spec.log_fd)
        if settings.log_file is not None:
            # By path, not the fd inherited at spawn: the file may have been rotated while this worker started.
            reopen_log(settings.log_file)
            loop.add_signal_handler(REOPEN_WORKER_LOG, reopen_log, settings.log_file)
        clock = WorkerClock(self.reporter, self.connections.guard, server)
        pid = os.getpid()
        logger.info("serving %s (slot %d, generation %d, pid %d)", settings.app, spec.slot, spec.generation, pid)
        await clock.serve()  # uvicorn's main_loop, on the worker's one timer
        self.mover.cancel()  # the drain closes every WebSocket over its own window
        result = await drain(
            server,
            self.connections,
            close_code=self.close_code,
            ws_window_s=drain_window(settings, self.connections.websocket_live),
            idle_grace_s=settings.idle_grace,
            deadline_s=max(0.5, settings.graceful_timeout - 1.0),
        )
        logger.info(
            "drained %d HTTP and %d WebSocket connections in %.2fs (%d forced)",
            result.http_closed,
            result.websocket_closed,
            result.seconds,
            result.forced,
        )
        await server.lifespan.shutdown()
        # One last report, so the supervisor sees the final counts of this worker.
        self.reporter.send_report(self.counts(), 0.0)
        clock.stop()
        bus.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    spec = WorkerSpec.from_json(args[0])
    for sig in (*IGNORED_BY_WORKERS, REOPEN_WORKER_LOG):  # a reopen before the loop handles it: nothing to do
        signal.signal(sig, signal.SIG_IGN)
    # Until serve() installs its handler, a move has nothing to move (and SIGUSR2's default would kill us).
    signal.signal(MOVE_WEBSOCKETS, signal.SIG_IGN)
    die_with_supervisor(spec.supervisor_pid)
    # The app may want to know which worker it runs in: the slot is stable across reloads, the generation is not.
    os.environ["WSUP_SLOT"] = str(spec.slot)
    os.environ["WSUP_GENERATION"] = str(spec.generation)
    worker = Worker(spec)
    exit_code = 0
    try:
        if spec.settings.env_file is not None:
            load_env_file(spec.settings.env_file)
        app = load_app(spec.settings.app, factory=spec.settings.factory, app_dir=spec.settings.app_dir)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(worker.serve(app))
    except AppLoadError as exc:
        print(f"wsup worker {spec.slot}: {exc}", file=sys.stderr, flush=True)
        worker.reporter.send_failed(str(exc))
        exit_code = EXIT_STARTUP_FAILED
    except Exception as exc:
        logger.exception("worker %d crashed", spec.slot)
        worker.reporter.send_failed(f"worker crashed: {type(exc).__name__}: {exc}")
        exit_code = 1
    finally:
        worker.reporter.close()
    sys.exit(exit_code)


if __name__ == "__main__":
    main()

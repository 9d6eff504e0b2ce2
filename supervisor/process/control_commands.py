"""The supervisor's control commands: what `wsup status/stop/reload/scale/restart/publish` ask of a running instance.

Each command is a method; ``handle`` dispatches by name and validates arguments, raising typed errors that the
control server turns into error replies. Signals arrive here too, as the same requests (see ``Supervisor``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ipc.control import ProgressSink
from ipc.errors import ConfigError
from ipc.messages import JSONObject, Request
from supervisor.process.status import build_status

if TYPE_CHECKING:  # the supervisor hands itself in; this module only reads it and calls its operations
    from supervisor.process.supervisor import Supervisor

Command = Callable[[JSONObject, ProgressSink], Awaitable[JSONObject]]


class ControlCommands:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self._table: dict[str, Command] = {
            "ping": self.ping,
            "status": self.status,
            "stop": self.stop,
            "reload": self.reload,
            "scale": self.scale,
            "restart": self.restart,
            "publish": self.publish,
            "drain": self.drain,
            "resume": self.resume,
        }

    async def handle(self, request: Request, progress: ProgressSink) -> JSONObject:
        command = self._table.get(request.cmd)
        if command is None:
            known = ", ".join(sorted(self._table))
            raise ConfigError(f"unknown control command {request.cmd!r} (known: {known})")
        return await command(request.args, progress)

    async def ping(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return {"pid": os.getpid()}

    async def status(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        sup = self.sup
        fleet = sup.fleet
        document = build_status(
            info={**sup.info, "operation": sup.operations.running, "stopping": fleet.stopping},
            fleet=fleet,
            balance=sup.steering.describe(),
            ipc={
                "malformed_stats": sup.stats.malformed,
                "malformed_control": sup.control.malformed,
                "unknown_reports": sup.unknown_reports,
                "dropped_reports": sum(w.last_report.dropped_reports for w in fleet.workers() if w.last_report),
                "published_by_supervisor": sup.bus.published,
            },
            started_at=sup.started_at,
            errors=sup.tasks.errors.describe(),
        )
        document["host_drain"] = sup.host_drain.describe()
        document["bridge"] = sup.bridge.describe() if sup.bridge is not None else None
        document["agent"] = sup.agent.describe() if sup.agent is not None else None
        return document

    async def stop(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        sup = self.sup
        pids = [os.getpid(), *(w.pid for w in sup.fleet.workers())]
        # Answer first, then stop: the CLI waits for these pids to be gone.
        asyncio.get_running_loop().call_soon(sup.request_stop)
        return {"stopping": True, "pids": pids, "graceful_timeout": sup.config.graceful_timeout}

    async def reload(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        batch = args.get("batch")
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool)):
            raise ConfigError(f"reload --batch must be a whole number, got {batch!r}")
        return await self.sup.operations.reload(progress, batch)

    async def scale(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        count = args.get("workers")
        if not isinstance(count, int) or isinstance(count, bool):
            raise ConfigError(f"scale needs a whole number of workers, got {count!r}")
        return await self.sup.operations.scale(count, progress)

    async def restart(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return await self.sup.operations.restart(progress)

    async def publish(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return self.sup.bus.handle_command(args)

    async def drain(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        move = args.get("move_websockets", False)
        window = args.get("window")
        if not isinstance(move, bool):
            raise ConfigError(f"drain move_websockets must be true or false, got {move!r}")
        if window is not None and (not isinstance(window, int | float) or isinstance(window, bool)):
            raise ConfigError(f"drain --window must be a number of seconds, got {window!r}")
        return self.sup.host_drain.start(move_websockets=move, window=None if window is None else float(window))

    async def resume(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return self.sup.host_drain.resume()

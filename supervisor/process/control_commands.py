"""The supervisor's control commands: what `wsup status/stop/reload/scale/restart/publish` ask of a running instance.

Each command is a method; ``handle`` dispatches by name and validates arguments, raising typed errors that the
control server turns into error replies. Signals arrive here too, as the same requests (see ``Supervisor``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from ipc.bus_proxy import BusProxy
from ipc.control import ProgressSink
from ipc.errors import ConfigError
from ipc.messages import JSONObject, Request
from supervisor.process.host_drain import HostDrain
from supervisor.process.operations import Operations

Command = Callable[[JSONObject, ProgressSink], Awaitable[JSONObject]]


class ControlCommands:
    """The commands, over what they need of the supervisor, handed in explicitly."""

    def __init__(
        self,
        *,
        operations: Operations,
        bus: BusProxy,
        snapshot: Callable[[], dict[str, Any]],
        request_stop: Callable[[], None],
        worker_pids: Callable[[], list[int]],
        graceful_timeout: float,
        host_drain: HostDrain,
    ) -> None:
        self.host_drain = host_drain
        self.operations = operations
        self.bus = bus
        self.snapshot = snapshot
        self.request_stop = request_stop
        self.worker_pids = worker_pids
        self.graceful_timeout = graceful_timeout
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

    async def stop(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        pids = [os.getpid(), *self.worker_pids()]
        # Answer first, then stop: the CLI waits for these pids to be gone.
        asyncio.get_running_loop().call_soon(self.request_stop)
        return {"stopping": True, "pids": pids, "graceful_timeout": self.graceful_timeout}

    async def reload(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        batch = args.get("batch")
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool)):
            raise ConfigError(f"reload --batch must be a whole number, got {batch!r}")
        return await self.operations.reload(progress, batch)

    async def scale(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        count = args.get("workers")
        if not isinstance(count, int) or isinstance(count, bool):
            raise ConfigError(f"scale needs a whole number of workers, got {count!r}")
        return await self.operations.scale(count, progress)

    async def restart(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return await self.operations.restart(progress)

    async def publish(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return self.bus.handle_command(args)

    async def drain(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        move = args.get("move_websockets", False)
        window = args.get("window")
        if not isinstance(move, bool):
            raise ConfigError(f"drain move_websockets must be true or false, got {move!r}")
        if window is not None and (not isinstance(window, int | float) or isinstance(window, bool)):
            raise ConfigError(f"drain --window must be a number of seconds, got {window!r}")
        return self.host_drain.start(move_websockets=move, window=None if window is None else float(window))

    async def resume(self, args: JSONObject, progress: ProgressSink) -> JSONObject:
        return self.host_drain.resume()

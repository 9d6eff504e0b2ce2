"""Every task the supervisor runs is owned here: nothing ends silently.

A long-lived task (the stats pump, the control server, the reconcile loop) that raises is logged with its traceback,
counted (``status --json``: ``supervisor.errors``) and started again after a short pause, so one bad message or
bug costs one message, not the instance. A one-shot task (a SIGHUP reload) leaves the set when it finishes; its
failure is logged and counted the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

logger = logging.getLogger("wsup.supervisor")
RESTART_DELAY_S = 0.05  # a task that fails at once is not restarted in a hot loop
MAX_RESTART_DELAY_S = 2.0


class TaskErrors:
    """What went wrong in the supervisor's own tasks, for ``status``."""

    def __init__(self) -> None:
        self.total = 0
        self.by_task: dict[str, int] = {}
        self.last: str | None = None

    def record(self, name: str, exc: BaseException) -> None:
        self.total += 1
        self.by_task[name] = self.by_task.get(name, 0) + 1
        self.last = f"{name}: {type(exc).__name__}: {exc}"[:500]

    def describe(self) -> dict[str, Any]:
        return {"total": self.total, "by_task": dict(self.by_task), "last": self.last}


class TaskSupervisor:
    def __init__(self) -> None:
        self.errors = TaskErrors()
        self._tasks: set[asyncio.Task[None]] = set()

    def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` for the supervisor's whole life, restarting it whenever it raises or returns."""
        self._own(asyncio.create_task(self._forever(name, run), name=f"wsup:{name}"))

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` once; a failure is logged and counted."""
        self._own(asyncio.create_task(self._once(name, coro), name=f"wsup:{name}"))

    def _own(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def _forever(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = RESTART_DELAY_S
        while True:
            try:
                await run()
                logger.error("supervisor task %s returned; starting it again", name)
                self.errors.record(name, RuntimeError("returned"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.record(name, exc)
                logger.exception("supervisor task %s failed; starting it again", name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)

    async def _once(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.record(name, exc)
            logger.exception("supervisor task %s failed", name)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

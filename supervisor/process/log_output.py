"""Where the instance logs (supervisor process): ``--log-file`` opened onto the supervisor's stderr, and reopened on
SIGUSR1 so that logrotate can move the file away.

Workers write their lines straight to the file, not through the supervisor (a pipe the supervisor copies would put
every log line on the event loop that steers connections). So on a reopen each worker is told to reopen the same
path itself (``ipc.signals.REOPEN_WORKER_LOG``), and a worker that becomes ready opens it by path too: no worker
keeps writing into a rotated file. The file is opened without following a symlink.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from ipc.errors import ConfigError
from ipc.signals import REOPEN_LOG, REOPEN_WORKER_LOG
from supervisor.log_format import open_log
from supervisor.process.slots import WorkerHandle

logger = logging.getLogger("wsup.supervisor")


class LogOutput:
    def __init__(self, path: str | None, log_format: str) -> None:
        self.path = path
        self.format = log_format
        self.reopened = 0
        self.failures = 0

    def describe(self) -> dict[str, Any]:
        return {"file": self.path, "format": self.format, "reopened": self.reopened}

    def open(self) -> None:
        """Point the supervisor's stderr at the file (the workers it spawns inherit it until they reopen it)."""
        if self.path is None:
            return
        try:
            fd = open_log(self.path)
        except OSError as exc:
            raise ConfigError(f"--log-file {self.path}: {exc.strerror}") from None
        try:
            os.dup2(fd, 2)
        finally:
            os.close(fd)

    def install(self, workers: Callable[[], Iterable[WorkerHandle]]) -> None:
        if self.path is not None:
            asyncio.get_running_loop().add_signal_handler(REOPEN_LOG, self.reopen, workers)

    def reopen(self, workers: Callable[[], Iterable[WorkerHandle]]) -> None:
        """Runs on the event loop (not in a signal handler): one open and one dup2, then a signal to each worker."""
        try:
            self.open()
        except ConfigError as exc:
            self.failures += 1
            logger.error("could not reopen the log: %s (still writing to the old file)", exc)
            return
        self.reopened += 1
        for worker in workers():
            try:
                os.kill(worker.pid, REOPEN_WORKER_LOG)
            except ProcessLookupError:
                pass
        logger.info("log reopened: %s", self.path)

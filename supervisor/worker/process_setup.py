"""How a worker process sets itself up before it serves, and its log afterwards (runs inside each worker).

Tied to the supervisor's life (PR_SET_PDEATHSIG), uvicorn's logging config with the worker's tag, the log reopened
after logrotate, the cause of a lifespan failure remembered for the one-line startup error, and ``--env-file``.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import signal
import sys
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from ipc.errors import AppLoadError
from ipc.settings import WorkerSpec
from supervisor.log_format import open_log, worker_tag

logger = logging.getLogger("wsup.worker")
_PR_SET_PDEATHSIG = 1
EXIT_STARTUP_FAILED = 3  # could not start (app import, lifespan, supervisor gone); a crash exits with 1


def die_with_supervisor(supervisor_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies, so no orphan ever keeps the port."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The supervisor may have died before prctl: then our parent is already someone else.
    if os.getppid() != supervisor_pid:
        os._exit(EXIT_STARTUP_FAILED)


def logging_config(spec: WorkerSpec) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    if spec.settings.log_format == "json":
        json = {"()": "supervisor.log_format.JsonFormatter", "source": "worker"}
        for name in ("default", "access"):
            config["formatters"][name] = {**json, "slot": spec.slot, "generation": spec.generation}
    else:
        prefix = f"%(asctime)s {worker_tag(spec.slot, spec.generation)} %(levelprefix)s "
        config["formatters"]["default"]["fmt"] = prefix + "%(message)s"
        config["formatters"]["access"]["fmt"] = prefix + '%(client_addr)s - "%(request_line)s" %(status_code)s'
    # Access lines go where every other line goes (the log file, when there is one), not to stdout.
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    level = spec.settings.log_level.upper() if spec.settings.log_level != "trace" else "DEBUG"
    config["loggers"]["wsup"] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


def reopen_log(path: str) -> None:
    """Point stderr at ``path`` again (after logrotate moved the old file away); keep the old one if that fails."""
    try:
        fd = open_log(path)
    except OSError as exc:
        logger.error("could not reopen the log %s: %s", path, exc.strerror)
        return
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)


class LastErrorHandler(logging.Handler):
    """Remembers the cause of a lifespan failure from what uvicorn logs, for the one-line startup error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.cause: str = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.cause = f"{type(exc).__name__}: {exc}"
        elif not self.cause:
            # Starlette reports the failure as a message holding the traceback: its last line names the error.
            lines = [line for line in record.getMessage().splitlines() if line.strip()]
            self.cause = lines[-1].strip() if lines else ""

    @property
    def last(self) -> str:
        return self.cause


def load_env_file(path: str) -> None:
    """``--env-file``, as uvicorn reads it (python-dotenv; variables already set win), but before the app is
    imported, since apps read their settings at import."""
    try:
        from dotenv import load_dotenv
    except ImportError:
        raise AppLoadError("--env-file needs python-dotenv (pip install python-dotenv)") from None
    if not load_dotenv(path, override=False) and not os.path.isfile(path):
        raise AppLoadError(f"--env-file {path!r} could not be read")

"""How wsup's log lines look, in the supervisor and in every worker: text with a stable source tag, or one JSON
object per line (``--log-format json``) for log shippers; and how the log file is opened. Light to import: workers
load it through uvicorn's logging config, and ``wsup logs`` reads the tags back.

A worker's tag is ``[worker SLOT/GENERATION]``: the slot is stable across reloads (a slot is one listening socket),
the generation tells the successive workers of a slot apart. Pids change on every reload, so lines carry them only
where they help (a worker's own "serving" line).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import orjson

LOG_FORMATS = ("text", "json")
SUPERVISOR_TAG = "[wsup]"
_WORKER_TAG = re.compile(r"\[worker (\d+)/(\d+)\]")
_ACCESS_FIELDS = ("client_addr", "method", "full_path", "http_version", "status_code")


def open_log(path: str) -> int:
    """An append-only fd on ``path``, created if missing (mode 0640); a symlink at ``path`` is refused."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o640)


def worker_tag(slot: int, generation: int) -> str:
    return f"[worker {slot}/{generation}]"


def line_slot(line: str) -> int | None:
    """The slot a log line comes from (text or JSON), or None for the supervisor's own and foreign lines."""
    if line.startswith("{"):
        try:
            slot = orjson.loads(line).get("slot")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return slot if isinstance(slot, int) and not isinstance(slot, bool) else None
    match = _WORKER_TAG.search(line, 0, 120)
    return int(match.group(1)) if match else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``source`` (supervisor or worker), ``slot``/``generation``
    for a worker, ``logger``, ``message``, an access log's request fields, and ``exc`` for a traceback."""

    def __init__(self, source: str = "supervisor", slot: int | None = None, generation: int | None = None) -> None:
        super().__init__()
        self.base: dict[str, Any] = {"source": source}
        if slot is not None:
            self.base.update(slot=slot, generation=generation)

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            **self.base,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            document.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()

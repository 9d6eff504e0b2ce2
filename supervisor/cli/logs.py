"""``wsup logs``: the last lines of an instance's log file, optionally one slot's, and following it (``-f``) across
reloads and rotations. Runs in the user's shell; yields lines, the CLI prints them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from ipc.errors import ConfigError, WsupError
from supervisor.log_format import line_slot

BLOCK = 64 * 1024
POLL_S = 0.2  # how often -f looks for new lines (what `tail -f` does without inotify)
MAX_LINE = 1 << 20  # a longer line is cut: a log reader must not hold a runaway line in memory


class NoLogFileError(WsupError):
    """The instance logs to a terminal, not to a file ``wsup logs`` can read."""


def keep(line: str, slot: int | None) -> bool:
    return slot is None or line_slot(line) == slot


def last_lines(path: Path, count: int, slot: int | None) -> tuple[list[str], int]:
    """The last ``count`` lines (of ``slot``), read backwards from the end; and the offset the file ended at."""
    if count < 0:
        raise ConfigError(f"-n must be 0 or more, got {count}")
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        position, pending = end, b""
        found: list[str] = []
        while position > 0 and len(found) < count:
            step = min(BLOCK, position)
            position -= step
            file.seek(position)
            chunk = file.read(step) + pending
            parts = chunk.split(b"\n")
            pending = parts.pop(0) if position > 0 else b""
            for raw in reversed(parts):
                text = raw[:MAX_LINE].decode(errors="replace")
                if raw and keep(text, slot):
                    found.append(text)
                    if len(found) == count:
                        break
            if len(pending) > MAX_LINE:
                pending = pending[-MAX_LINE:]
        if position == 0 and pending and len(found) < count and keep(pending.decode(errors="replace"), slot):
            found.append(pending.decode(errors="replace"))
    return list(reversed(found)), end


def follow(path: Path, offset: int, slot: int | None) -> Iterator[str]:
    """Lines appended from ``offset`` on, forever; after a rotation (a new file at ``path``), the new file's."""
    file = open(path, "rb")
    file.seek(offset)
    identity = os.fstat(file.fileno()).st_ino
    pending = b""
    try:
        while True:
            chunk = file.read(BLOCK)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                pending = pending[-MAX_LINE:]
                for raw in lines:
                    text = raw[:MAX_LINE].decode(errors="replace")
                    if keep(text, slot):
                        yield text
                continue
            try:
                rotated = os.stat(path).st_ino != identity
            except FileNotFoundError:
                rotated = False  # moved away, the new one not created yet: keep reading the old one meanwhile
            if rotated:
                file.close()
                file = open(path, "rb")
                identity = os.fstat(file.fileno()).st_ino
                continue
            time.sleep(POLL_S)
    finally:
        file.close()

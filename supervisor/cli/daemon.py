"""``wsup start --daemon``: run the supervisor detached and return once it is ready, or fail with its reason.

The detached supervisor is the same ``wsup start`` in the foreground, in a new session, with its output sent to a
log file; it writes one JSON line to a pipe when every worker is ready, or the error that stopped it.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from ipc.errors import StartupError, error_from_kind
from supervisor.child_env import child_env, python_module


def start_detached(
    argv: list[str], log_fd: int, log_file: Path, timeout: float, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Spawn the supervisor with its output on ``log_fd`` (opened by the caller: in the verified instance
    directory, or at the path the user named) and wait for its one-line verdict."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            python_module("supervisor.cli", *argv, "--notify-fd", str(write_fd)),
            pass_fds=(write_fd,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env={**child_env(), **(extra_env or {})},
        )
    finally:
        os.close(write_fd)
        os.close(log_fd)
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                proc.kill()
                raise StartupError(f"the supervisor was not ready within {timeout:g}s; see {log_file}")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    if not data.strip():
        proc.wait(timeout=10)
        raise StartupError(f"the supervisor exited with code {proc.returncode} during startup; see {log_file}")
    message: dict[str, Any] = orjson.loads(data.splitlines()[0])
    if not message.get("ok"):
        proc.wait(timeout=30)
        raise error_from_kind(str(message.get("kind", "StartupError")), str(message.get("error", "unknown error")))
    return message


def notify(fd: int, message: dict[str, Any]) -> None:
    """Tell the waiting ``wsup start --daemon`` how startup went (the fd is closed after one message)."""
    try:
        os.write(fd, orjson.dumps(message) + b"\n")
        os.close(fd)
    except OSError:
        pass  # the starting CLI went away: nobody to tell

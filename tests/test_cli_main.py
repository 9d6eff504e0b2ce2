"""The CLI's output to a reader that goes away: `wsup status | head -1` ends quietly, with no traceback."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from tests.wsup_harness import WSUP, Instance


def _to_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run with stdout on a pipe whose reader is already closed: every write fails with EPIPE."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        return subprocess.run(
            [*WSUP, *args], stdout=write_fd, stderr=subprocess.PIPE, env=env, timeout=60, stdin=subprocess.DEVNULL
        )
    finally:
        os.close(write_fd)


def test_output_to_a_closed_pipe_ends_quietly(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2")
    wsup.wait_ready(2)
    for args in (["status", "--name", wsup.name], ["status", "--name", wsup.name, "--json"], ["config", "x:y"]):
        result = _to_closed_pipe(args, wsup.env)
        assert result.returncode == 0 and result.stderr == b"", (args, result.stderr.decode())
    shell = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "-", *WSUP, "status", "--name", wsup.name],
        capture_output=True, text=True, env=wsup.env, timeout=60,
    )  # fmt: skip
    assert shell.returncode == 0 and shell.stderr == "" and shell.stdout.startswith("wsup t:"), shell

"""Every bad input gets a one-line error, a non-zero exit code, and leaves nothing running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from ipc.endpoints import instance_paths, is_running
from tests.wsup_harness import Instance, free_port, port_is_free, run_cli, wait_until


def _start(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    port = free_port()
    result = run_cli("start", *args, "--port", str(port), "--name", "bad", env=env, timeout=90)
    return result, port


def _assert_clean_failure(result: subprocess.CompletedProcess[str], port: int, env: dict[str, str], code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wsup: "), result.stderr
    assert port_is_free(port)
    assert not is_running(instance_paths("bad", Path(env["WSUP_RUN_DIR"])))


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("nosuchmodule:asgi", "No module named 'nosuchmodule'"),
        ("app:nope", "has no attribute 'nope'"),
        ("tests.apps.broken_import:asgi", "RuntimeError: database URL is not configured"),
        ("tests.apps.failing_startup:asgi", "cannot reach the cache"),
        ("tests.apps.not_an_app:asgi", "is not an ASGI application"),
    ],
)
def test_app_that_cannot_start(wsup_env: dict[str, str], app: str, expected: str) -> None:
    result, port = _start(wsup_env, app, "-i", "2")
    _assert_clean_failure(result, port, wsup_env, 1)
    assert expected in result.stderr.strip().splitlines()[-1]


def test_app_that_cannot_start_as_daemon(wsup_env: dict[str, str]) -> None:
    result, port = _start(wsup_env, "nosuchmodule:asgi", "--daemon")
    _assert_clean_failure(result, port, wsup_env, 1)
    assert "No module named 'nosuchmodule'" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["app"], "APP must look like 'module:attribute'"),
        (["app:asgi", "-i", "lots"], "-i/--instances must be a positive whole number or 'max'"),
        (["app:asgi", "-i", "1000"], "-i/--instances must be between 1 and 128"),
        (["app:asgi", "--balance", "random"], "--balance must be one of"),
        (["app:asgi", "--app-dir", "/nonexistent"], "is not a directory"),
    ],
)
def test_bad_arguments(wsup_env: dict[str, str], args: list[str], expected: str) -> None:
    result, port = _start(wsup_env, *args)
    _assert_clean_failure(result, port, wsup_env, 2)
    assert expected in result.stderr


def test_port_in_use(wsup_env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("start", "app:asgi", "--port", str(port), "--name", "bad", env=wsup_env)
        assert result.returncode == 1
        assert f"127.0.0.1:{port} is already in use" in result.stderr
        assert not is_running(instance_paths("bad", Path(wsup_env["WSUP_RUN_DIR"])))


def test_unknown_command_and_no_command(wsup_env: dict[str, str]) -> None:
    result = run_cli("frobnicate", env=wsup_env)
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
    assert run_cli(env=wsup_env).returncode == 2


@pytest.mark.parametrize("command", ["status", "stop"])
def test_no_running_instance(wsup_env: dict[str, str], command: str) -> None:
    result = run_cli(command, env=wsup_env)
    assert result.returncode == 3
    # The error says where it looked and how to look elsewhere (issue: a different environment found nothing).
    assert result.stderr.strip() == (
        f"wsup: no running wsup instance in {wsup_env['WSUP_RUN_DIR']} (the run directory; WSUP_RUN_DIR chooses"
        " another): start one with `wsup start APP`"
    )
    named = run_cli(command, "--name", "ghost", env=wsup_env)
    assert named.returncode == 3 and "'ghost'" in named.stderr


def test_name_already_running(start_wsup: Callable[..., Instance]) -> None:
    first = start_wsup("app:asgi", name="dup")
    first.wait_ready(1)
    port = free_port()
    result = first.cli("start", "app:asgi", "--name", "dup", "--port", str(port))
    assert result.returncode == 1
    assert "an instance named 'dup' is already running" in result.stderr
    assert port_is_free(port)
    assert first.status()["totals"]["ready"] == 1


def test_supervisor_not_answering_times_out(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi")
    pid = wsup.wait_ready(1)["supervisor"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        result = wsup.cli("status", "--name", wsup.name, "--timeout", "1")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 4
    assert "did not answer 'status' within 1s" in result.stderr


def test_malformed_and_oversized_messages_are_counted_not_fatal(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi")
    wsup.wait_ready(1)
    paths = instance_paths(wsup.name, Path(wsup.env["WSUP_RUN_DIR"]))
    context = zmq.Context()
    try:
        with context.socket(zmq.PUSH) as push:
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(paths.stats)
            for garbage in (b"not json", b"[1,2]", b'{"v":1,"t":"report"}', b'{"v":9,"t":"ready"}', b"x" * 300_000):
                push.send(garbage)
        with context.socket(zmq.DEALER) as dealer:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(paths.control)
            dealer.send(b'{"v":1,"t":"request","id":"1"}')
            assert dealer.poll(5000)
            assert b"lacks field(s) cmd" in dealer.recv()
            dealer.send(b'{"v":1,"t":"request","id":"2","cmd":"explode"}')
            assert dealer.poll(5000)
            assert b"unknown control command 'explode'" in dealer.recv()
    finally:
        context.term()

    def counted() -> bool:
        # The 300,000-byte frame is past ZMQ_MAXMSGSIZE: ZeroMQ cuts its sender off before reading it, uncounted.
        ipc = wsup.status()["ipc"]
        return bool(ipc["malformed_stats"] == 4 and ipc["malformed_control"] == 1)

    wait_until(counted, 10, 0.1, "malformed messages to be counted")
    assert wsup.status()["totals"]["ready"] == 1

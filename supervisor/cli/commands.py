"""What each CLI command does, as functions that return data or raise typed errors (the CLI prints)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from ipc import control
from ipc.bus_remote import publish_to_instance
from ipc.endpoints import InstanceDir, InstancePaths, find_instance, instance_paths, read_info, running_instances
from ipc.errors import AmbiguousInstanceError, ConfigError, RunDirectoryGoneError, SupervisorTimeoutError, WsupError
from supervisor.cli.daemon import notify, start_detached
from supervisor.cli.status_view import render_instances, render_status
from supervisor.config import SupervisorConfig, parse_instances

__all__ = ["render_instances", "render_status"]
# `wsup start` options that are settings (the rest steer the CLI itself: --daemon, --log-file, --notify-fd).
START_OPTIONS = frozenset(
    {"app", "instances", "name", "host", "port", "factory", "app_dir", "log_level", "access_log", "balance"}
    | {"graceful_timeout", "ready_timeout", "heartbeat_timeout", "ws_drain_window", "reload_batch"}
    | {"bus_queue", "bus_policy", "bus_max_bytes", "bus_coalesce_ms"}
    | {"max_header_bytes", "header_timeout", "idle_timeout", "max_connections"}
)
CONTROL_TIMEOUT_S = 5.0
# A signalled stop cannot learn the instance's --graceful-timeout: wait for the default drain and then some.
SIGNALLED_STOP_TIMEOUT_S = 120.0


def config_from_args(args: argparse.Namespace) -> SupervisorConfig:
    """The options given on the command line (argparse leaves the others out: their defaults live in the config)."""
    options = {key: value for key, value in vars(args).items() if key in START_OPTIONS}
    options["workers"] = parse_instances(options.pop("instances", "1"))
    options.setdefault("name", args.app.partition(":")[0].replace(".", "-"))
    return SupervisorConfig.from_options(options)


async def start_foreground(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    paths = instance_paths(config.name)
    from supervisor.process.supervisor import Supervisor  # only `wsup start` needs the supervisor process's code

    def on_ready(info: dict[str, Any]) -> None:
        if args.notify_fd is not None:
            notify(args.notify_fd, {"ok": True, **info})
        else:
            print(
                f"wsup: {config.name} serving {config.app} on {info['address']} with {len(info['workers'])} workers"
                " (Ctrl-C to stop)",
                flush=True,
            )

    await Supervisor(config, paths).run(on_ready)
    return 0


def start_daemon(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    config = config_from_args(args)  # fail on bad input here, before anything is spawned
    paths = instance_paths(config.name)
    log_file, log_fd = _open_daemon_log(paths, args.log_file)
    info = start_detached(["start", *argv], log_fd, log_file, timeout=config.ready_timeout + 15)
    return {**info, "log": str(log_file)}


def _open_daemon_log(paths: InstancePaths, explicit: str | None) -> tuple[Path, int]:
    """The ``--daemon`` log: the path the user named, or ``wsup.log`` in the instance's directory, opened only
    after that directory was verified (no link followed, ours, private)."""
    if explicit:
        try:
            return Path(explicit), os.open(explicit, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"--log-file {explicit}: {exc.strerror}") from None
    directory = InstanceDir(paths, create=True)
    try:
        return paths.log_file, directory.open_log()
    finally:
        directory.close()


def notify_failure(fd: int, error: WsupError) -> None:
    notify(fd, {"ok": False, "error": str(error), "kind": type(error).__name__})


def status(name: str | None, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any] | list[dict[str, Any]]:
    try:
        paths = find_instance(name)
    except AmbiguousInstanceError:
        running = running_instances()
        if not running:  # the same name in several other run directories: the error says which
            raise
        return [read_info(p) for p in running]
    return control.call(paths.control, "status", timeout=timeout)


def rollout(
    name: str | None, cmd: str, args: dict[str, Any], on_progress: control.ProgressSink | None, timeout: float
) -> dict[str, Any]:
    """Run a reload, restart or scale; the supervisor sends a heartbeat every second, so ``timeout`` bounds silence.

    A reload of an instance whose run directory is gone is asked for by SIGHUP (the same request in the supervisor);
    it then reports nothing back: ``{"signalled": pid}``."""
    try:
        paths = find_instance(name)
    except RunDirectoryGoneError as exc:
        if cmd != "reload":
            raise
        os.kill(exc.pid, signal.SIGHUP)
        return {"signalled": exc.pid}
    return control.call(paths.control, cmd, args, timeout=timeout, on_progress=on_progress)


def publish(
    name: str | None, channel: str, text: str, *, as_json: bool = False, timeout: float = CONTROL_TIMEOUT_S
) -> dict[str, Any]:
    """``wsup publish``: ``text`` as is, or parsed as JSON first (so a typo is refused, not broadcast)."""
    if as_json:
        try:
            text = orjson.dumps(orjson.loads(text)).decode()
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--json: MESSAGE is not valid JSON: {exc}") from None
    return publish_to_instance(channel, text, name=name, timeout=timeout)


def stop(name: str | None, timeout: float = CONTROL_TIMEOUT_S) -> str:
    """Stop an instance and wait until the supervisor and every worker are gone (so the port is free).

    An instance whose run directory is gone is stopped by SIGTERM (the same drain as `wsup stop`); its workers
    die with their supervisor, so waiting for the supervisor is enough."""
    try:
        paths = find_instance(name)
    except RunDirectoryGoneError as exc:
        try:
            supervisor = psutil.Process(exc.pid)
        except psutil.NoSuchProcess:
            return name or str(exc.pid)
        os.kill(exc.pid, signal.SIGTERM)
        if _wait_gone([supervisor], SIGNALLED_STOP_TIMEOUT_S):
            raise SupervisorTimeoutError(f"supervisor {exc.pid} still runs after SIGTERM: kill it") from None
        return name or str(exc.pid)
    result = control.call(paths.control, "stop", timeout=timeout)
    deadline = float(result.get("graceful_timeout", 30.0)) + 10.0
    procs = []
    for pid in result.get("pids", []):
        try:
            procs.append(psutil.Process(int(pid)))
        except psutil.NoSuchProcess:
            pass
    started = time.monotonic()
    alive = _wait_gone(procs, deadline)
    if alive:
        pids = ", ".join(str(p.pid) for p in alive)
        raise SupervisorTimeoutError(
            f"processes {pids} of {paths.name!r} still run {time.monotonic() - started:.0f}s after stop: kill them"
        )
    return paths.name


def _gone(proc: psutil.Process) -> bool:
    # A zombie has exited: only its parent (maybe a shell or a test harness, not us) can reap it.
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = procs
    while alive:
        _, alive = psutil.wait_procs(alive, timeout=0.05)
        alive = [p for p in alive if not _gone(p)]
        if time.monotonic() > deadline:
            break
    return alive

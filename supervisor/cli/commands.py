"""What each CLI command does, as functions that return data or raise typed errors (the CLI prints)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import psutil

from ipc import control
from ipc.bus_remote import publish_to_instance
from ipc.endpoints import InstanceDir, InstancePaths, find_instance, instance_paths, read_info, running_instances
from ipc.errors import AmbiguousInstanceError, ConfigError, RunDirectoryGoneError, SupervisorTimeoutError, WsupError
from ipc.settings import PASSWORD_ENV, WorkerSettings
from supervisor.admin_address import TOKEN_ENV
from supervisor.cli.daemon import notify, start_detached
from supervisor.cli.status_view import render_instances, render_status
from supervisor.config import SupervisorConfig, parse_instances

__all__ = ["render_instances", "render_status"]
# `wsup start` options that are settings: every field of the two settings dataclasses (the others steer the CLI
# itself: --daemon, --log-file, --notify-fd), and -i, which becomes ``workers``.
START_OPTIONS = frozenset(
    {f.name for f in dataclasses.fields(SupervisorConfig) if f.name not in ("worker", "workers")}
    | {f.name for f in dataclasses.fields(WorkerSettings)}
    | {"instances"}
)
CONTROL_TIMEOUT_S = 5.0
MAX_SECRET_BYTES = 4096
# A signalled stop cannot learn the instance's --graceful-timeout: wait for the default drain and then some.
SIGNALLED_STOP_TIMEOUT_S = 120.0


def config_from_options(given: Mapping[str, Any]) -> SupervisorConfig:
    """The config of `wsup start` from its options in force (command line over config file; the others are
    absent: their defaults live in the config classes)."""
    options = {key: value for key, value in given.items() if key in START_OPTIONS}
    if not options.get("app"):
        raise ConfigError(
            'no APP: name it (`wsup start main:app`) or set app = "main:app" in wsup.toml'
            " or [tool.wsup] in pyproject.toml"
        )
    options["workers"] = parse_instances(str(options.pop("instances", "1")))
    options.setdefault("name", options["app"].partition(":")[0].replace(".", "-"))
    if "header" in options:
        options["header"] = tuple(options["header"])
    password_file = given.get("ssl_keyfile_password_file")
    if password_file is not None:
        options["ssl_keyfile_password"] = _read_secret(str(password_file))
    elif "ssl_keyfile_password" not in options and os.environ.get(PASSWORD_ENV):
        options["ssl_keyfile_password"] = os.environ[PASSWORD_ENV]
    if "log_file" in options:  # workers open it too (to reopen it after a rotation): the same file from any cwd
        options["log_file"] = os.path.abspath(options["log_file"])
    if "admin" in options and os.environ.get(TOKEN_ENV):
        options.setdefault("admin_token", os.environ[TOKEN_ENV])
    return SupervisorConfig.from_options(options)


def _read_secret(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--ssl-keyfile-password-file {path!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"--ssl-keyfile-password-file {path!r} is larger than {MAX_SECRET_BYTES} bytes")
    return data.decode(errors="replace").rstrip("\r\n")


async def start_foreground(options: Mapping[str, Any], notify_fd: int | None) -> int:
    config = config_from_options(options)
    paths = instance_paths(config.name)
    from supervisor.process.supervisor import Supervisor  # only `wsup start` needs the supervisor process's code

    def on_ready(info: dict[str, Any]) -> None:
        if notify_fd is not None:
            notify(notify_fd, {"ok": True, **info})
        else:
            print(
                f"wsup: {config.name} serving {config.app} on {info['address']} with {len(info['workers'])} workers"
                " (Ctrl-C to stop)",
                flush=True,
            )

    await Supervisor(config, paths).run(on_ready)
    return 0


def start_daemon(options: Mapping[str, Any], argv: list[str], config_path: Path | None) -> dict[str, Any]:
    """Start the same `wsup start` detached. The child reads the same config file (named explicitly: the
    directory it was found in could change meanwhile), and gets the key's password through its environment,
    not its command line. Its log is opened here, after the instance's directory was verified."""
    config = config_from_options(options)  # fail on bad input here, before anything is spawned
    paths = instance_paths(config.name)
    log_file, log_fd = _open_daemon_log(paths, config.worker.log_file)
    argv = _without_secret([a for a in argv if a != "--daemon"])
    if config.worker.log_file is None:  # the detached supervisor reopens it by name on SIGUSR1
        argv = [*argv, "--log-file", str(log_file)]
    if config_path is not None and "--config" not in argv:
        argv += ["--config", str(config_path.resolve())]
    secret = {PASSWORD_ENV: config.worker.ssl_keyfile_password} if config.worker.ssl_keyfile_password else {}
    info = start_detached(["start", *argv], log_fd, log_file, timeout=config.ready_timeout + 15, extra_env=secret)
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


def _without_secret(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ssl-keyfile-password":
            skip = True
        elif not arg.startswith("--ssl-keyfile-password="):
            out.append(arg)
    return out


def systemd_unit(args: argparse.Namespace, argv: list[str]) -> str:
    """``wsup systemd-unit``: the options are checked as `wsup start` would, then rendered as a unit."""
    from supervisor.cli.systemd_unit import render_unit

    options = argparse.Namespace(**vars(args))
    admin = getattr(args, "admin", None)
    if admin is not None and not getattr(args, "admin_token", None) and not os.environ.get(TOKEN_ENV):
        # The token belongs in the unit's EnvironmentFile, not in this shell: check everything else.
        options.admin_token = "x" * 32
    return render_unit(config_from_options(vars(options)), argv)


def log_file(name: str | None, timeout: float = CONTROL_TIMEOUT_S) -> Path:
    """Where a running instance logs; without one running, the daemon's default log of ``name`` if it exists."""
    from supervisor.cli.logs import NoLogFileError

    try:
        paths = find_instance(name)
    except WsupError:
        fallback = instance_paths(name).log_file if name else None
        if fallback is not None and fallback.is_file():  # a daemon's log stays in its directory after a stop
            return fallback
        raise
    info = control.call(paths.control, "status", timeout=timeout)
    path = (info.get("log") or {}).get("file")
    if not path:
        raise NoLogFileError(
            f"{paths.name!r} logs to the terminal it was started from: start it with --log-file or --daemon"
        )
    return Path(path)


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


def drain(
    name: str | None, *, move_websockets: bool, window: float | None, timeout: float = CONTROL_TIMEOUT_S
) -> dict[str, Any]:
    """``wsup drain``: the balancer in front sends no new connections; optionally move the WebSockets away."""
    paths = find_instance(name)
    return control.call(paths.control, "drain", {"move_websockets": move_websockets, "window": window}, timeout=timeout)


def resume(name: str | None, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
    paths = find_instance(name)
    return control.call(paths.control, "resume", timeout=timeout)


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

"""The ``wsup`` command line: parses arguments, runs a command, and is the only place that prints or exits.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration, 3 no running instance, 4 the supervisor
did not answer in time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from ipc.errors import WsupError
from ipc.settings import WorkerSettings, defaults
from supervisor.cli import app_commands, app_sections, app_view, commands, config_file, settings_view
from supervisor.cli.parser import build_parser, start_parser
from supervisor.cli.status_view import progress_line
from supervisor.config import parse_instances
from supervisor.log_format import SUPERVISOR_TAG, JsonFormatter

logger = logging.getLogger("wsup")


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _resolve(args: argparse.Namespace) -> list[config_file.Resolved]:
    """The instances to start (one, or the config file's [apps.NAME] sections) and the options in force for each:
    the command line's over the section's over the file's."""
    given = {key: value for key, value in vars(args).items() if key not in ("command", "json", "only")}
    return app_sections.resolve_all(given, start_parser()._actions, Path.cwd(), getattr(args, "only", None))


def _setup_logging(options: dict[str, Any]) -> None:
    log_level = options.get("log_level", defaults(WorkerSettings)["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    if options.get("log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {SUPERVISOR_TAG} %(levelname)s %(message)s"))
    logging.basicConfig(
        level=log_level.upper() if log_level in ("critical", "error", "warning", "info", "debug") else "DEBUG",
        handlers=[handler],
    )


def _run_start(args: argparse.Namespace, argv: Sequence[str]) -> int:
    instances = _resolve(args)
    for resolved in instances:  # every instance is valid, or none is started
        app_sections.config_of(resolved)
    first = instances[0]
    _setup_logging(first.options)
    notify_fd = getattr(args, "notify_fd", None)
    if first.section is not None and (len(instances) > 1 or getattr(args, "only", None) is None):
        return _start_apps(instances, list(argv))  # several instances: each detached, as PM2 does
    if first.options.get("daemon") and notify_fd is None:  # the detached child runs in the foreground
        child = app_sections.child_argv(list(argv), first.section) if first.section is not None else list(argv)
        info = commands.start_daemon(first.options, child, first.path)
        print(
            f"wsup: {info['name']} started on {info['address']} with {len(info['workers'])} workers"
            f" (log: {info['log']})"
        )
        return 0
    return asyncio.run(commands.start_foreground(first.options, notify_fd))


def _start_apps(instances: list[config_file.Resolved], argv: list[str]) -> int:
    outcomes = app_commands.start_all(instances, argv)
    for outcome in outcomes:
        if outcome.error is None:
            print(app_view.started(outcome), flush=True)
        else:
            print(app_view.failed(outcome), file=sys.stderr, flush=True)
    _print_summary(app_view.summary(outcomes, "start"))
    return app_commands.exit_code(outcomes)


def _print_summary(line: str | None) -> None:
    if line is not None:
        sys.stdout.flush()
        print(line, file=sys.stderr)


def _config(args: argparse.Namespace) -> int:
    instances = _resolve(args)
    order = [action.dest for action in start_parser()._actions]
    path = instances[0].path
    if instances[0].section is None:
        settings = settings_view.effective_settings(instances[0], order)
        if getattr(args, "json", False):
            _print_json({"file": str(path) if path else None, "settings": settings})
        else:
            print(settings_view.render_settings(settings, path))
        return 0
    apps = [(r, settings_view.effective_settings(r, order)) for r in instances]
    if getattr(args, "json", False):
        _print_json(settings_view.apps_document(apps))
    else:
        print("\n\n".join(settings_view.render_settings(rows, path, r.section) for r, rows in apps))
    return 0


def _file_instances(args: argparse.Namespace) -> list[config_file.Resolved] | None:
    return app_sections.file_instances(args.name, args.only, args.config, start_parser()._actions, Path.cwd())


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _status(args: argparse.Namespace) -> int:
    instances = _file_instances(args)
    if instances is not None:
        outcomes = app_commands.status_all(instances, args.timeout)
        if args.json:
            _print_json({"file": str(instances[0].path), "instances": app_view.as_json(outcomes, "status")})
        else:
            print(app_view.status_table(outcomes))
        return app_commands.exit_code(outcomes)
    result = commands.status(args.name, args.timeout)
    if isinstance(result, list):  # several instances and no --name: list them
        if args.json:
            _print_json({"instances": result})
        else:
            print(commands.render_instances(result))
        return 0
    if args.json:
        _print_json(result)
    else:
        print(commands.render_status(result))
    return 0


def _stop(args: argparse.Namespace) -> int:
    instances = _file_instances(args)
    if instances is None:
        name = commands.stop(args.name, args.timeout)
        print(f"wsup: {name} stopped")
        return 0
    outcomes = app_commands.stop_all(instances, args.timeout)
    for outcome in outcomes:
        if outcome.error is None or outcome.not_running:
            print(app_view.stopped(outcome), flush=True)
        else:
            print(app_view.failed(outcome), file=sys.stderr, flush=True)
    _print_summary(app_view.summary(outcomes, "stop", not_running_is_failure=False))
    return app_commands.stop_exit_code(outcomes)


def _progress(prefix: str = "") -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        line = progress_line(event)
        if line is not None:
            print(prefix + line, flush=True)

    return show


def _reload(args: argparse.Namespace) -> int:
    instances = _file_instances(args)
    if instances is not None:
        return _reload_apps(args, instances)
    result = commands.rollout(
        args.name, "reload", {"batch": args.batch}, None if args.json else _progress(), args.timeout
    )
    if args.json:
        _print_json(result)
    elif "signalled" in result:
        print(f"wsup: its run directory is gone: asked supervisor {result['signalled']} to reload by SIGHUP")
    else:
        print(f"wsup: reloaded {len(result['slots'])} workers in {result['seconds']:.2f}s")
    return 0


def _reload_apps(args: argparse.Namespace, instances: list[config_file.Resolved]) -> int:
    def done(outcome: app_commands.Outcome) -> None:
        if outcome.error is None:
            print(app_view.reloaded(outcome), flush=True)
        else:
            print(app_view.failed(outcome), file=sys.stderr, flush=True)

    outcomes = app_commands.reload_all(
        instances,
        args.batch,
        lambda name: None if args.json else _progress(f"{name}: "),
        args.timeout,
        None if args.json else done,
    )
    if args.json:
        _print_json({"file": str(instances[0].path), "instances": app_view.as_json(outcomes, "result")})
    else:
        _print_summary(app_view.summary(outcomes, "reload"))
    return app_commands.exit_code(outcomes)


def _restart(args: argparse.Namespace) -> int:
    result = commands.rollout(args.name, "restart", {}, _progress(), args.timeout)
    print(f"wsup: restarted {len(result['pids'])} workers in {result['seconds']:.2f}s")
    return 0


def _scale(args: argparse.Namespace) -> int:
    count = parse_instances(args.workers, "scale N")
    result = commands.rollout(args.name, "scale", {"workers": count}, _progress(), args.timeout)
    print(f"wsup: scaled from {result['from']} to {result['to']} workers")
    return 0


def _publish(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.message == "-" else args.message
    result = commands.publish(args.name, args.channel, text, as_json=args.json, timeout=args.timeout)
    print(f"wsup: published {result['bytes']} bytes to {result['channel']!r}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from supervisor.cli import logs

    path = commands.log_file(args.name, args.timeout)
    try:
        lines, end = logs.last_lines(path, args.lines, args.slot)
        for line in lines:
            print(line)
        if args.follow:
            sys.stdout.flush()
            for line in logs.follow(path, end, args.slot):
                print(line, flush=True)
    except OSError as exc:
        raise WsupError(f"cannot read the log {path}: {exc.strerror}") from None
    except BrokenPipeError:
        return 0
    return 0


def _drain(args: argparse.Namespace) -> int:
    result = commands.drain(args.name, move_websockets=args.move_websockets, window=args.window, timeout=args.timeout)
    moved = ""
    if args.move_websockets:
        moved = f", moving its WebSockets over {result['window_s']:g}s ({result['move']})"
    print(f"wsup: draining{moved}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    result = commands.resume(args.name, args.timeout)
    print("wsup: resumed" if result["was_draining"] else "wsup: was not draining")
    return 0


COMMANDS.update(
    config=_config, status=_status, stop=_stop, reload=_reload, restart=_restart, scale=_scale, publish=_publish
)
COMMANDS.update(logs=_logs, drain=_drain, resume=_resume)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "start":
            return _run_start(args, argv[argv.index("start") + 1 :])
        if args.command == "systemd-unit":
            sys.stdout.write(commands.systemd_unit(args, argv[argv.index("systemd-unit") + 1 :]))
            sys.stdout.flush()
            return 0
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that went away is noticed here, not at interpreter exit
        return code
    except WsupError as exc:
        if getattr(args, "notify_fd", None) is not None:
            commands.notify_failure(args.notify_fd, exc)
        print(f"wsup: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # before OSError, of which it is one
        _quiet_broken_pipe()
        return 0
    except OSError as exc:  # a file or socket the system refused (permissions, a full disk): one line, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"wsup: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _quiet_broken_pipe() -> None:
    """The reader went away (``wsup status | head -1``): nothing more to say, and nothing to say it to. Point
    stdout at /dev/null so the interpreter's final flush does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def exit_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    exit_main()

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
from supervisor.cli import commands, config_file, settings_view, start_options
from supervisor.config import SupervisorConfig, parse_instances
from supervisor.log_format import SUPERVISOR_TAG, JsonFormatter

logger = logging.getLogger("wsup")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit code 2, like every other usage error
        self.exit(
            2,
            f"wsup: {message} (see `wsup {self.prog.split()[-1]} --help`)\n"
            if " " in self.prog
            else f"wsup: {message} (see `wsup --help`)\n",
        )


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="instance name (default: the only running instance)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the supervisor to answer")


def _add_start_options(start: argparse.ArgumentParser) -> None:
    """Options left out stay out of the namespace: their defaults live in ``SupervisorConfig``/``WorkerSettings``."""
    d = {**defaults(SupervisorConfig), **defaults(WorkerSettings)}
    start.add_argument(
        "app",
        metavar="APP",
        nargs="?",
        help="the ASGI app as module:attribute, e.g. app:asgi (default: the config file's)",
    )
    start.add_argument(
        "--config", metavar="FILE", help="config file (default ./wsup.toml, or [tool.wsup] in pyproject.toml)"
    )
    start.add_argument("-i", "--instances", help="worker processes: a number or 'max' (default 1)")
    start.add_argument("--host", help=f"address to listen on (default {d['host']})")
    start.add_argument("--port", type=int, help=f"port to listen on (default {d['port']}; 0 picks one)")
    start.add_argument("--name", help="instance name (default: the app's module name)")
    start.add_argument("--daemon", action="store_true", help="run in the background; return once ready")
    start.add_argument("--log-level", help="critical|error|warning|info|debug|trace (default info)")
    start.add_argument(
        "--log-file",
        help="where the supervisor and workers log (default: the terminal; with --daemon, <run dir>/NAME.log);"
        " reopened on SIGUSR1, for logrotate",
    )
    start.add_argument("--log-format", help="text, or json: one JSON object per line (default text)")
    start.add_argument("--factory", action="store_true", help="APP is a callable that returns the ASGI app")
    start.add_argument("--app-dir", help="directory to import APP from (default: current)")
    start.add_argument("--access-log", action=argparse.BooleanOptionalAction, help="log every request (default on)")
    start.add_argument(
        "--balance",
        help=f"least-conn (steer by live connections), ip-hash (one client address, one worker: sticky sessions)"
        f" or hash (default {d['balance']})",
    )
    start.add_argument(
        "--graceful-timeout", type=float, help=f"drain budget per worker (s, default {d['graceful_timeout']:g})"
    )
    start.add_argument(
        "--ready-timeout", type=float, help=f"time a new worker has to get ready (s, default {d['ready_timeout']:g})"
    )
    start.add_argument(
        "--heartbeat-timeout",
        type=float,
        help=f"replace a worker whose event loop is silent this long (s, default {d['heartbeat_timeout']:g})",
    )
    start.add_argument(
        "--ws-drain-window",
        type=float,
        help=f"spread WebSocket closes of a draining worker over this window (s, default {d['ws_drain_window']:g})",
    )
    start.add_argument(
        "--ws-drain-rate",
        type=float,
        help="widen that window so at most this many WebSocket clients a second reconnect"
        f" (0: no pacing; default {d['ws_drain_rate']:g})",
    )
    start.add_argument(
        "--reload-batch", type=int, help=f"slots replaced at once by a reload (default {d['reload_batch']})"
    )
    start.add_argument(
        "--bus-queue", type=int, help=f"broadcast backlog per subscriber (messages, default {d['bus_queue']})"
    )
    start.add_argument(
        "--bus-policy", help=f"full backlog: drop-oldest, or disconnect (close code 1013) (default {d['bus_policy']})"
    )
    start.add_argument(
        "--bus-max-bytes", type=int, help=f"largest broadcast message (bytes, default {d['bus_max_bytes']})"
    )
    start.add_argument(
        "--bus-coalesce-ms",
        type=float,
        help="under load, send each client the broadcasts of this window in one write"
        f" (0: never; default {d['bus_coalesce_ms']:g})",
    )
    start.add_argument(
        "--admin",
        metavar="[HOST:]PORT",
        help="serve /metrics (Prometheus), /health, /status and a live dashboard at / from the supervisor"
        " (off by default; HOST defaults to 127.0.0.1, loopback only: any other HOST needs a token)",
    )
    start.add_argument(
        "--admin-token",
        help="token the admin endpoint requires (Authorization: Bearer, or ?token=); prefer the WSUP_ADMIN_TOKEN"
        " environment variable, which other users cannot read in the process list",
    )
    start_options.add_recycling(start)
    start_options.add_uvicorn(start)
    start.add_argument(
        "--bridge",
        metavar="URL",
        help="relay the bus between hosts through Redis: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://"
        " (the password may come from WSUP_BRIDGE_PASSWORD instead)",
    )
    start.add_argument("--bridge-prefix", help="prefix of the Redis channels (default wsup:NAME:)")
    start.add_argument("--agent-port", type=int, help="answer HAProxy's agent-check on this port (0 picks one)")
    start.add_argument("--agent-host", help="address the agent-check listens on (default: --host)")
    start.add_argument(
        "--max-header-bytes",
        type=int,
        help=f"request line + headers a client may send; more gets 431 (default {d['max_header_bytes']})",
    )
    start.add_argument(
        "--header-timeout",
        type=float,
        help=f"seconds a request may take to send its headers, 0: off (default {d['header_timeout']:g})",
    )
    start.add_argument(
        "--idle-timeout",
        type=float,
        help=f"close a new connection that sends nothing this long (s), 0: off (default {d['idle_timeout']:g})",
    )
    start.add_argument(
        "--max-connections",
        type=int,
        help="connections per worker; more get 503 (default 0: the descriptor limit less 128)",
    )
    start.add_argument("--notify-fd", type=int, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsup", description="Connection-aware supervisor for ASGI WebSocket services.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    start = sub.add_parser("start", help="start a supervisor and its workers", argument_default=argparse.SUPPRESS)
    _add_start_options(start)
    config = sub.add_parser(
        "config",
        help="print the settings `wsup start` would run with, and where each comes from",
        argument_default=argparse.SUPPRESS,
    )
    _add_start_options(config)
    config.add_argument("--json", action="store_true", help="print them as JSON")

    status = sub.add_parser("status", help="show workers and their live connections")
    _add_name(status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    stop = sub.add_parser("stop", help="stop gracefully (drain, then kill past --graceful-timeout)")
    _add_name(stop)

    reload = sub.add_parser("reload", help="replace every worker, one slot at a time, with zero downtime")
    _add_name(reload)
    reload.add_argument("--batch", type=int, help="slots replaced at once (default: the instance's --reload-batch)")
    reload.add_argument("--json", action="store_true", help="print the result as JSON")

    restart = sub.add_parser("restart", help="stop every worker and start new ones at once (not zero-downtime)")
    _add_name(restart)

    scale = sub.add_parser("scale", help="change the number of workers (adds slots, or drains the highest ones)")
    scale.add_argument("workers", metavar="N", help="the new number of workers, or 'max'")
    _add_name(scale)

    logs = sub.add_parser("logs", help="show the instance's log (each worker's lines tagged slot/generation)")
    _add_name(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (across reloads)")
    logs.add_argument("-n", "--lines", type=int, default=20, help="how many of the last lines to show (default 20)")
    logs.add_argument("--slot", type=int, help="only the lines of this slot's workers")

    unit = sub.add_parser(
        "systemd-unit",
        help="print a systemd service (Type=notify, reload, drain on stop) for `wsup start` with these options",
        argument_default=argparse.SUPPRESS,
    )
    _add_start_options(unit)

    publish = sub.add_parser("publish", help="publish a message to a broadcast channel of a running instance")
    publish.add_argument("channel", metavar="CHANNEL", help="the channel name")
    publish.add_argument("message", metavar="MESSAGE", help="the message, as text ('-' reads it from stdin)")
    publish.add_argument("--json", action="store_true", help="MESSAGE is JSON: check it and send it as JSON text")
    _add_name(publish)

    drain = sub.add_parser("drain", help="take no new connections from the balancer (a rolling deploy of hosts)")
    drain.add_argument(
        "--move-websockets", action="store_true", help="also close WebSockets with 1012 so they reconnect elsewhere"
    )
    drain.add_argument(
        "--window", type=float, metavar="S", help="spread those closes over S seconds (default --ws-drain-window)"
    )
    _add_name(drain)
    resume = sub.add_parser("resume", help="undo drain: take new connections again")
    _add_name(resume)
    return parser


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _resolve(args: argparse.Namespace) -> config_file.Resolved:
    """The start options in force: the command line's over the config file's."""
    given = {key: value for key, value in vars(args).items() if key not in ("command", "json")}
    return config_file.resolve(given, _start_parser()._actions, Path.cwd())


def _start_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsup start", argument_default=argparse.SUPPRESS)
    _add_start_options(parser)
    return parser


def _run_start(args: argparse.Namespace, argv: Sequence[str]) -> int:
    resolved = _resolve(args)
    options = resolved.options
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
    notify_fd = getattr(args, "notify_fd", None)
    if options.get("daemon") and notify_fd is None:  # the detached child runs in the foreground
        info = commands.start_daemon(options, list(argv), resolved.path)
        print(
            f"wsup: {info['name']} started on {info['address']} with {len(info['workers'])} workers"
            f" (log: {info['log']})"
        )
        return 0
    return asyncio.run(commands.start_foreground(options, notify_fd))


def _config(args: argparse.Namespace) -> int:
    resolved = _resolve(args)
    settings = settings_view.effective_settings(resolved, [action.dest for action in _start_parser()._actions])
    if getattr(args, "json", False):
        _print_json({"file": str(resolved.path) if resolved.path else None, "settings": settings})
    else:
        print(settings_view.render_settings(settings, resolved.path))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _status(args: argparse.Namespace) -> int:
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
    name = commands.stop(args.name, args.timeout)
    print(f"wsup: {name} stopped")
    return 0


def _print_progress(event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "replaced":
        drained = event["drained"]
        print(
            f"slot {event['slot']}: {event['old_pid']} -> {event['new_pid']}, drained {drained['http']} HTTP"
            f" + {drained['websocket']} WebSocket connections in {event['seconds']:.2f}s",
            flush=True,
        )
    elif kind == "added":
        print(f"slot {event['slot']}: added worker {event['pid']}" + (f" ({event['error']})" if event["error"] else ""))
    elif kind == "removed":
        drained = event["drained"]
        print(
            f"slot {event['slot']}: removed worker {event['pid']}, drained {drained['http']} HTTP"
            f" + {drained['websocket']} WebSocket connections",
            flush=True,
        )


def _reload(args: argparse.Namespace) -> int:
    result = commands.rollout(
        args.name, "reload", {"batch": args.batch}, None if args.json else _print_progress, args.timeout
    )
    if args.json:
        _print_json(result)
    elif "signalled" in result:
        print(f"wsup: its run directory is gone: asked supervisor {result['signalled']} to reload by SIGHUP")
    else:
        print(f"wsup: reloaded {len(result['slots'])} workers in {result['seconds']:.2f}s")
    return 0


def _restart(args: argparse.Namespace) -> int:
    result = commands.rollout(args.name, "restart", {}, _print_progress, args.timeout)
    print(f"wsup: restarted {len(result['pids'])} workers in {result['seconds']:.2f}s")
    return 0


def _scale(args: argparse.Namespace) -> int:
    count = parse_instances(args.workers, "scale N")
    result = commands.rollout(args.name, "scale", {"workers": count}, _print_progress, args.timeout)
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

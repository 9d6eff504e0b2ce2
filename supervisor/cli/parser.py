"""The ``wsup`` command line's grammar: every command and its arguments as argparse definitions (runs in the user's
shell). The options of `wsup start` are in ``start_options.py``; ``main.py`` runs what was parsed.
"""

from __future__ import annotations

import argparse
from typing import Any

from supervisor.cli import start_options


class Parser(argparse.ArgumentParser):
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


_ONLY_HELP = "only these [apps.NAME] sections of the config file (comma-separated; default: every section)"


def _add_file_selection(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--name``, or the instances of the config file's [apps.NAME] sections (every one, or ``--only``)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--name", help="instance name (default: the config file's [apps.NAME] instances, else the only running one)"
    )
    which.add_argument("--only", metavar="NAMES", help=f"{verb} only these [apps.NAME] sections of the config file")
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default ./wsup.toml, or [tool.wsup] in pyproject.toml)"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the supervisor to answer")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wsup", description="Connection-aware supervisor for ASGI WebSocket services.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    start = sub.add_parser("start", help="start a supervisor and its workers", argument_default=argparse.SUPPRESS)
    start_options.add_start_options(start)
    start.add_argument("--only", metavar="NAMES", help=_ONLY_HELP + "; one of them alone runs in the foreground")
    config = sub.add_parser(
        "config",
        help="print the settings `wsup start` would run with, and where each comes from",
        argument_default=argparse.SUPPRESS,
    )
    start_options.add_start_options(config)
    config.add_argument("--only", metavar="NAMES", help=_ONLY_HELP)
    config.add_argument("--json", action="store_true", help="print them as JSON")

    status = sub.add_parser("status", help="show workers and their live connections")
    _add_file_selection(status, "show")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    stop = sub.add_parser("stop", help="stop gracefully (drain, then kill past --graceful-timeout)")
    _add_file_selection(stop, "stop")

    reload = sub.add_parser("reload", help="replace every worker, one slot at a time, with zero downtime")
    _add_file_selection(reload, "reload")
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
    start_options.add_start_options(unit)

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


def start_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wsup start", argument_default=argparse.SUPPRESS)
    start_options.add_start_options(parser)
    return parser

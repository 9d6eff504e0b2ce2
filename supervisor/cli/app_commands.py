"""`wsup start|stop|reload|status` on the instances of a config file's ``[apps.NAME]`` sections (runs in the user's
shell): each returns one outcome per instance, in the file's order, and raises nothing for one instance's failure,
so the CLI can say which failed and still report the others.

Starts and stops run at once (each waits on its own processes); reloads run one instance after the other, so two
instances never replace workers at the same time on one host.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ipc import control
from ipc.endpoints import find_instance
from ipc.errors import NotRunningError, WsupError
from supervisor.cli import commands
from supervisor.cli.app_sections import child_argv
from supervisor.cli.config_file import Resolved


@dataclass
class Outcome:
    """What one instance's command gave: ``result`` or ``error`` (a typed error, with its exit code)."""

    section: str
    name: str
    result: Any = None
    error: WsupError | None = None

    @property
    def not_running(self) -> bool:
        return isinstance(self.error, NotRunningError)


def _each(
    instances: list[Resolved],
    run: Callable[[Resolved], Any],
    at_once: bool,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    def one(resolved: Resolved) -> Outcome:
        outcome = Outcome(str(resolved.section), str(resolved.options["name"]))
        try:
            outcome.result = run(resolved)
        except WsupError as exc:
            outcome.error = exc
        if on_done is not None:
            on_done(outcome)
        return outcome

    if not at_once or len(instances) < 2:
        return [one(resolved) for resolved in instances]
    with ThreadPoolExecutor(max_workers=min(len(instances), 16), thread_name_prefix="wsup-app") as pool:
        return list(pool.map(one, instances))


def start_all(instances: list[Resolved], argv: list[str]) -> list[Outcome]:
    """Start each instance detached (a foreground supervisor runs one instance); each returns once its workers
    are ready or it failed, and a failed one leaves nothing running. The options were validated by the caller."""
    return _each(
        instances,
        lambda resolved: commands.start_daemon(
            resolved.options, child_argv(argv, str(resolved.section)), resolved.path
        ),
        at_once=True,
    )


def stop_all(instances: list[Resolved], timeout: float) -> list[Outcome]:
    return _each(instances, lambda resolved: commands.stop(resolved.options["name"], timeout), at_once=True)


def status_all(instances: list[Resolved], timeout: float) -> list[Outcome]:
    def status(resolved: Resolved) -> dict[str, Any]:
        paths = find_instance(str(resolved.options["name"]))
        return control.call(paths.control, "status", timeout=timeout)

    return _each(instances, status, at_once=True)


def reload_all(
    instances: list[Resolved],
    batch: int | None,
    on_progress: Callable[[str], control.ProgressSink | None],
    timeout: float,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Reload each instance in turn; ``on_progress(name)`` gives the progress sink of that instance's reload, and
    ``on_done`` hears how each one ended before the next begins."""

    def reload(resolved: Resolved) -> dict[str, Any]:
        name = str(resolved.options["name"])
        return commands.rollout(name, "reload", {"batch": batch}, on_progress(name), timeout)

    return _each(instances, reload, at_once=False, on_done=on_done)


def exit_code(outcomes: list[Outcome]) -> int:
    """The first failure's exit code, or 0."""
    return next((outcome.error.exit_code for outcome in outcomes if outcome.error is not None), 0)


def stop_exit_code(outcomes: list[Outcome]) -> int:
    """An instance that was not running is stopped; none running at all is exit 3, as for `wsup stop`."""
    failures = [outcome for outcome in outcomes if outcome.error is not None and not outcome.not_running]
    if failures:
        return exit_code(failures)
    return 3 if all(outcome.not_running for outcome in outcomes) else 0

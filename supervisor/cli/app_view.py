"""The text of `wsup start|stop|reload|status` on a config file's ``[apps.NAME]`` instances (runs in the user's
shell): one line per instance, and a last line that says which failed. Functions return text; the CLI prints."""

from __future__ import annotations

from typing import Any

from supervisor.cli.app_commands import Outcome


def started(outcome: Outcome) -> str:
    info = outcome.result
    return f"wsup: {outcome.name} started on {info['address']} with {len(info['workers'])} workers (log: {info['log']})"


def stopped(outcome: Outcome) -> str:
    return f"wsup: {outcome.name} was not running" if outcome.not_running else f"wsup: {outcome.name} stopped"


def reloaded(outcome: Outcome) -> str:
    result = outcome.result
    if "signalled" in result:
        return f"wsup: {outcome.name}: its run directory is gone: asked supervisor {result['signalled']} to reload"
    return f"wsup: {outcome.name}: reloaded {len(result['slots'])} workers in {result['seconds']:.2f}s"


def failed(outcome: Outcome) -> str:
    return f"wsup: {outcome.name} ([apps.{outcome.section}]): {outcome.error}"


def summary(outcomes: list[Outcome], verb: str, *, not_running_is_failure: bool = True) -> str | None:
    """``None`` when every instance succeeded, else the line that names the ones that failed."""
    bad = [o.name for o in outcomes if o.error is not None and (not_running_is_failure or not o.not_running)]
    if not bad:
        return None
    return f"wsup: {len(bad)} of {len(outcomes)} instances failed to {verb}: {', '.join(bad)}"


def status_table(outcomes: list[Outcome]) -> str:
    """One line per instance of the file: running (address, ready workers, supervisor pid) or why not."""
    width = max(len(o.name) for o in outcomes)
    lines = []
    for outcome in outcomes:
        head = outcome.name.ljust(width)
        if outcome.error is not None:
            state = "not running" if outcome.not_running else f"unknown: {outcome.error}"
            lines.append(f"{head}  {state}")
            continue
        doc = outcome.result
        workers = doc.get("workers", [])
        ready = sum(1 for worker in workers if worker.get("state") == "ready")
        pid = (doc.get("supervisor") or {}).get("pid", "?")
        lines.append(
            f"{head}  running  {doc.get('address', '?')}  {ready}/{len(workers)} workers ready  (pid {pid})"
            + ("  [stopping]" if doc.get("stopping") else "")
            + (f"  [{doc['operation']}]" if doc.get("operation") else "")
        )
    return "\n".join(lines)


def as_json(outcomes: list[Outcome], key: str) -> list[dict[str, Any]]:
    """Each instance with its result under ``key`` (``null`` on failure) and its error (``null`` on success)."""
    return [
        {
            "section": o.section,
            "name": o.name,
            key: o.result,
            "error": None if o.error is None else str(o.error),
            **({"running": o.error is None} if key == "status" else {}),
        }
        for o in outcomes
    ]

"""`wsup config`: the settings `wsup start` would run with, each with where it came from (runs in the user's shell).

Values are the validated config's, so what is printed is what would run; the key's password is never printed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from supervisor.cli.app_sections import config_of
from supervisor.cli.commands import START_OPTIONS
from supervisor.cli.config_file import Resolved
from supervisor.config import SupervisorConfig

SECRET = "ssl_keyfile_password"
_CLI_ONLY = ("daemon", "log_file", "ssl_keyfile_password_file")


def effective_settings(resolved: Resolved, order: list[str]) -> list[dict[str, Any]]:
    """One row per start option, in ``order`` (the options' order in ``wsup start --help``)."""
    config = config_of(resolved)
    own = {f.name for f in dataclasses.fields(SupervisorConfig)} - {"worker"}
    rows = []
    for dest in dict.fromkeys(name for name in order if name in START_OPTIONS or name in _CLI_ONLY):
        if dest == "instances":
            value: Any = config.workers
        elif dest in own:
            value = getattr(config, dest)
        elif hasattr(config.worker, dest):
            value = getattr(config.worker, dest)
        else:
            value = resolved.options.get(dest)
        if dest == "daemon":
            value = bool(value)
        elif dest == SECRET:
            value = "(set)" if value else None
        elif isinstance(value, tuple):
            value = list(value)
        source = resolved.source(dest)
        if dest == "name" and dest not in resolved.sources:
            source = "default (the app's module)"
        rows.append({"key": dest.replace("_", "-"), "value": value, "source": source})
    return rows


def render_settings(rows: list[dict[str, Any]], path: Path | None, section: str | None = None) -> str:
    lines = [f"# config file: {path}" if path else "# config file: none (wsup.toml, or [tool.wsup] in pyproject.toml)"]
    if section is not None:
        name = next((row["value"] for row in rows if row["key"] == "name"), section)
        lines[0] += f", section [apps.{section}]: instance {name!r}"
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        value = row["value"]
        text = "(not set)" if value is None else orjson.dumps(value).decode()
        lines.append(f"{row['key'].ljust(width)} = {text:<24} # {row['source']}")
    return "\n".join(lines)


def apps_document(apps: list[tuple[Resolved, list[dict[str, Any]]]]) -> dict[str, Any]:
    """`wsup config --json` of a file with [apps.NAME] sections: each section's instance name and settings."""
    sections = [{"section": r.section, "name": r.options["name"], "settings": rows} for r, rows in apps]
    return {"file": str(apps[0][0].path), "apps": sections}

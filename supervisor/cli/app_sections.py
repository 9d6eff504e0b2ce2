"""Several named instances in one config file, PM2's ecosystem file in TOML (runs in the user's shell): the
``[apps.NAME]`` sections, each one instance. Keys at the top of the file are defaults every section shares, a
section's keys override them, the command line overrides both, and the section's name is the instance's name
unless it sets ``name``. ``--only api,chat`` selects sections.

The table is ``apps``, not ``instances``: ``instances`` is the worker count (``-i``), as in PM2's ecosystem file.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ipc.endpoints import validate_name
from ipc.errors import ConfigError
from ipc.settings import defaults
from supervisor.cli import config_file
from supervisor.cli.commands import config_from_options
from supervisor.cli.config_file import FILE, SECTION, Resolved
from supervisor.config import SupervisorConfig

APPS = "apps"
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def resolve_all(
    given: Mapping[str, Any], actions: Iterable[argparse.Action], cwd: Path, only: str | None = None
) -> list[Resolved]:
    """The instances a command acts on, each with its options in force: the file's sections (those ``only``
    names, in the file's order), or the one instance of a file without sections (or of no file)."""
    actions = list(actions)
    found = config_file.find(given.get("config"), cwd)
    if found is None or APPS not in found[1]:
        if only is not None:
            where = f"{found[0]} has" if found else "there is no config file (wsup.toml), so there are"
            raise ConfigError(f"--only: {where} no [apps.NAME] sections to choose from")
        if found is None:
            return [config_file.resolve(given, [], None, None)]
        path, table = found
        return [config_file.resolve(given, [(config_file.file_options(table, path, actions), FILE)], path, None)]
    path, table = found
    sections = _sections(table[APPS], path)
    shared = {key: value for key, value in table.items() if key != APPS}
    if "name" in shared:
        raise ConfigError(
            f"{path}: key 'name' cannot be shared by every [apps.NAME] section: a section's name is its instance's"
            " name; set name inside a section to change it"
        )
    common = config_file.file_options(shared, path, actions)
    layers: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for section, own_table in sections.items():
        own = config_file.file_options(own_table, path, actions, f"{path} [apps.{section}]")
        own.setdefault("name", section)
        layers[section] = [(common, FILE), (own, SECTION)]
    _check_clashes([config_file.resolve({}, layers[section], path, section) for section in layers], path, "")
    chosen = [config_file.resolve(given, layers[section], path, section) for section in _select(layers, only, path)]
    if len(chosen) > 1:
        _check_clashes(chosen, path, " with the options of the command line")
    return chosen


def file_instances(
    name: str | None, only: str | None, config: str | None, actions: Iterable[argparse.Action], cwd: Path
) -> list[Resolved] | None:
    """The instances `status`, `stop` and `reload` act on without ``--name``: the file's sections (every one, or
    those of ``--only``); None: act on ``--name``, or on the only running instance, as without a config file."""
    if name is not None:
        return None
    if only is None and config is None:
        found = config_file.find(None, cwd)
        if found is None or APPS not in found[1]:
            return None  # a single-instance file does not say which instance runs: leave it unread
    instances = resolve_all({"config": config} if config is not None else {}, actions, cwd, only)
    return instances if instances[0].section is not None else None


def _sections(apps: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(apps, dict) or not apps:
        raise ConfigError(f"{path}: 'apps' must hold one [apps.NAME] table of settings per instance")
    for section, table in apps.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: [apps.{section}] must be a table of settings, got {type(table).__name__} {table!r}"
            )
        try:
            validate_name(section)
        except ConfigError as exc:
            raise ConfigError(f"{path} [apps.{section}]: {exc} (the section's name is the instance's)") from None
    return apps


def parse_only(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"--only {text!r}: name sections separated by commas, e.g. --only api,chat")
    return list(dict.fromkeys(names))


def _select(sections: Mapping[str, object], only: str | None, path: Path) -> list[str]:
    if only is None:
        return list(sections)
    wanted = parse_only(only)
    missing = [name for name in wanted if name not in sections]
    if missing:
        raise ConfigError(f"--only: no section [apps.{missing[0]}] in {path} (its sections: {', '.join(sections)})")
    return [section for section in sections if section in wanted]


def _check_clashes(instances: list[Resolved], path: Path, context: str) -> None:
    """Two instances with one name would share a run directory, and two on one address one port: refuse both."""
    fallback = defaults(SupervisorConfig)
    seen_names: dict[str, str] = {}
    seen_addresses: list[tuple[str, int, str]] = []
    for resolved in instances:
        label = f"[apps.{resolved.section}]"
        name = str(resolved.options["name"])
        if name in seen_names:
            raise ConfigError(f"{path}: {seen_names[name]} and {label} would both be instance {name!r}{context}")
        seen_names[name] = label
        host, port = str(resolved.options.get("host", fallback["host"])), resolved.options.get("port", fallback["port"])
        if port == 0:  # each gets a free port of its own
            continue
        for other_host, other_port, other in seen_addresses:
            if port == other_port and (host == other_host or {host, other_host} & _WILDCARDS):
                raise ConfigError(
                    f"{path}: {other} and {label} would both listen on port {port} ({other_host} and {host}){context}"
                )
        seen_addresses.append((host, port, label))


def config_of(resolved: Resolved) -> SupervisorConfig:
    """The instance's validated config; an error names the section and the file it comes from."""
    try:
        return config_from_options(resolved.options)
    except ConfigError as exc:
        if resolved.section is None:
            raise
        raise ConfigError(f"{resolved.label}: {exc}") from None


def child_argv(argv: list[str], section: str) -> list[str]:
    """The arguments of the detached ``wsup start`` of one section: the user's, with ``--only`` that section."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--only":
            skip = True
        elif not arg.startswith("--only="):
            out.append(arg)
    return [*out, "--only", section]

"""The project's config file for `wsup start` and `wsup config` (runs in the user's shell): found, type-checked
against the start options, and merged under the command line, remembering where each setting came from.

Where: ``--config FILE``, else ``wsup.toml`` in the current directory, else the ``[tool.wsup]`` table of
``pyproject.toml``. Keys are the long option names as written on the command line, with dashes
(``max-requests = 2000``, ``app = "main:app"``); a key with underscores is refused with the dashed spelling.
Relative paths in the file are relative to the file's directory, and so is the app when ``app-dir`` is not given.
A file with ``[apps.NAME]`` sections describes several instances: ``app_sections.py`` resolves those.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipc.errors import ConfigError

WSUP_TOML = "wsup.toml"
PYPROJECT = "pyproject.toml"
MAX_FILE_BYTES = 1 << 20
NOT_IN_FILE = frozenset({"config", "only", "notify_fd", "help"})
PATH_KEYS = frozenset(
    {"app_dir", "log_file", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "ssl_keyfile_password_file", "env_file"}
)
DEFAULT, FILE, SECTION, COMMAND_LINE = "default", "file", "section", "command line"


@dataclass
class Resolved:
    """The start options of one instance in force: ``options`` by dest, and for each given one where it came from.
    ``section`` is the ``[apps.NAME]`` section the instance comes from, if the file has sections."""

    options: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # dest -> FILE, SECTION or COMMAND_LINE
    path: Path | None = None
    section: str | None = None

    @property
    def label(self) -> str:
        """Where this instance is described, for error messages: the file, and its section if any."""
        where = str(self.path) if self.path else "the command line"
        return f"{where} [apps.{self.section}]" if self.section is not None else where

    def source(self, dest: str) -> str:
        where = self.sources.get(dest, DEFAULT)
        if where == FILE:
            return f"file ({self.path})"
        return f"file [apps.{self.section}] ({self.path})" if where == SECTION else where


def find(explicit: str | None, cwd: Path) -> tuple[Path, dict[str, Any]] | None:
    """The config file in force and its table, or None when the project has none."""
    if explicit is not None:
        path = Path(explicit)
        return path, (_tool_table(path) or {}) if path.name == PYPROJECT else _read(path)
    toml, pyproject = cwd / WSUP_TOML, cwd / PYPROJECT
    own = (toml, _read(toml)) if toml.is_file() else None
    tool = _tool_table(pyproject) if pyproject.is_file() else None
    if own is not None and tool is not None:
        raise ConfigError(f"both {toml} and [tool.wsup] in {pyproject} configure wsup: keep one of them")
    if own is not None:
        return own
    return (pyproject, tool) if tool is not None else None


def _tool_table(pyproject: Path) -> dict[str, Any] | None:
    tool = _read(pyproject).get("tool", {})
    table = tool.get("wsup") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: [tool.wsup] must be a table")
    return table


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        return tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _by_key(actions: Iterable[argparse.Action]) -> dict[str, argparse.Action]:
    """Each start option by its file key: its long name without the dashes (``--max-requests`` -> max-requests)."""
    keys: dict[str, argparse.Action] = {}
    for action in actions:
        if action.dest in NOT_IN_FILE or action.help == argparse.SUPPRESS:
            continue
        if not action.option_strings:
            keys[action.dest.replace("_", "-")] = action  # the positional APP
        for name in action.option_strings:
            if name.startswith("--") and not name.startswith("--no-"):
                keys[name[2:]] = action
    return keys


def file_options(
    table: Mapping[str, Any], path: Path, actions: Iterable[argparse.Action], label: str = ""
) -> dict[str, Any]:
    """The settings of a table of the file (``label``: which, for errors) by dest, checked as the command line
    would check them; errors name the key, the table and the file. Relative paths become the file directory's."""
    keys = _by_key(actions)
    where = label or str(path)
    options: dict[str, Any] = {}
    for key, value in table.items():
        action = keys.get(key)
        if action is None:
            dashed = key.replace("_", "-")
            if dashed in keys:
                raise ConfigError(f"{where}: key {key!r}: keys are spelled like the options, with dashes: {dashed!r}")
            if key.startswith("no-") and key[3:] in keys:
                raise ConfigError(f"{where}: key {key!r}: write '{key[3:]} = false'")
            raise ConfigError(f"{where}: unknown key {key!r} (keys are the long options of `wsup start`)")
        options[action.dest] = _convert(key, value, action, where)
    for dest in PATH_KEYS & options.keys():
        options[dest] = str(path.parent / Path(options[dest]).expanduser())
    return options


def _convert(key: str, value: Any, action: argparse.Action, where: str) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: key {key!r} must be {expected}, got {type(value).__name__} {value!r}")

    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # a flag: true or false
        if not isinstance(value, bool):
            raise wrong("true or false")
        if isinstance(action, argparse._StoreFalseAction):
            return not value
        return value
    if action.dest == "instances":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise wrong("a number or 'max'")
        return str(value)
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise wrong("a list of strings")
        return value
    kind = action.type
    if isinstance(value, bool):
        raise wrong(_expected(kind))
    if kind is int:
        if not isinstance(value, int):
            raise wrong("a whole number")
        return value
    if kind is float:
        if not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if kind is None:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if not isinstance(value, int | str):  # a parsing type (a size, a boolean word): give it its text
        raise wrong(_expected(kind))
    try:
        assert callable(kind)
        return kind(str(value))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ConfigError(f"{where}: key {key!r}: {exc}") from None


def _expected(kind: Any) -> str:
    return {int: "a whole number", float: "a number", None: "a string"}.get(kind, "a string or a number")


def resolve(
    given: Mapping[str, Any], layers: Iterable[tuple[dict[str, Any], str]], path: Path | None, section: str | None
) -> Resolved:
    """The command line's options (``given``: only what was typed) over the file's ``layers`` (options by dest and
    their source, the more specific last)."""
    options: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, source in layers:
        options.update(layer)
        sources.update(dict.fromkeys(layer, source))
    if path is not None and "app" in options and "app_dir" not in options:
        options["app_dir"] = str(path.parent)  # the project is where its config file is
        sources["app_dir"] = FILE
    for dest, value in given.items():
        if dest not in NOT_IN_FILE:
            options[dest] = value
            sources[dest] = COMMAND_LINE
    return Resolved(options, sources, path, section)

"""The per-instance run directory: where an instance's ZeroMQ endpoints, lock and description live.

Layout: ``<root>/<name>/`` (mode 0700) holds ``control`` (CLI requests), ``stats`` (worker reports), ``bus-in`` and
``bus-out`` (the broadcast proxy), ``lock`` (held by the supervisor for its whole life, so a ``kill -9`` releases it)
and ``instance.json``. The root is ``$WSUP_RUN_DIR``, else ``$XDG_RUNTIME_DIR/wsup``, else ``/tmp/wsup-<uid>``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ipc.errors import AlreadyRunningError, AmbiguousInstanceError, ConfigError, NotRunningError

RUN_DIR_ENV = "WSUP_RUN_DIR"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_IPC_PATH = 107


def runtime_root() -> Path:
    """The directory that holds one subdirectory per instance of this user."""
    explicit = os.environ.get(RUN_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "wsup"
    return Path(f"/tmp/wsup-{os.getuid()}")


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid instance name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter"
        )
    return name


@dataclass(frozen=True, slots=True)
class InstancePaths:
    """Every path and ZeroMQ endpoint of one named instance."""

    name: str
    directory: Path

    def _endpoint(self, leaf: str) -> str:
        return f"ipc://{self.directory / leaf}"

    @property
    def control(self) -> str:
        return self._endpoint("control")

    @property
    def stats(self) -> str:
        return self._endpoint("stats")

    @property
    def bus_in(self) -> str:
        return self._endpoint("bus-in")

    @property
    def bus_out(self) -> str:
        return self._endpoint("bus-out")

    @property
    def lock_file(self) -> Path:
        return self.directory / "lock"

    @property
    def info_file(self) -> Path:
        return self.directory / "instance.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "wsup.log"


def instance_paths(name: str, root: Path | None = None) -> InstancePaths:
    paths = InstancePaths(validate_name(name), (root or runtime_root()) / name)
    longest = len(str(paths.directory / "control"))
    if longest > _MAX_IPC_PATH:
        raise ConfigError(
            f"run directory {paths.directory} is too long for a Unix socket path ({longest} > {_MAX_IPC_PATH} bytes):"
            f" set {RUN_DIR_ENV} to a shorter directory"
        )
    return paths


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(f"run directory {path} belongs to uid {info.st_uid}, not to you: set {RUN_DIR_ENV}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


class InstanceLock:
    """The supervisor's claim on an instance name: an flock the kernel drops when the process dies."""

    def __init__(self, paths: InstancePaths) -> None:
        self.paths = paths
        _ensure_private_dir(paths.directory.parent)
        _ensure_private_dir(paths.directory)
        self._fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise AlreadyRunningError(
                f"an instance named {paths.name!r} is already running: stop it first or pass another --name"
            ) from None
        # Endpoints left by a supervisor that was killed would make bind() fail: we own the name now.
        for leaf in ("control", "stats", "bus-in", "bus-out", "instance.json"):
            (paths.directory / leaf).unlink(missing_ok=True)

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.paths.info_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        tmp.replace(self.paths.info_file)

    def release(self) -> None:
        """Remove the instance directory and drop the lock (in that order, so a new owner finds it clean)."""
        if self._fd < 0:
            return
        shutil.rmtree(self.paths.directory, ignore_errors=True)
        os.close(self._fd)
        self._fd = -1


def is_running(paths: InstancePaths) -> bool:
    """True while a supervisor holds the instance's lock."""
    try:
        fd = os.open(paths.lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_info(paths: InstancePaths) -> dict[str, Any]:
    try:
        info = orjson.loads(paths.info_file.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {"name": paths.name}
    return info if isinstance(info, dict) else {"name": paths.name}


def running_instances(root: Path | None = None) -> list[InstancePaths]:
    base = root or runtime_root()
    if not base.is_dir():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        if entry.is_dir() and _NAME_RE.match(entry.name):
            paths = InstancePaths(entry.name, entry)
            if is_running(paths):
                found.append(paths)
    return found


def find_instance(name: str | None, root: Path | None = None) -> InstancePaths:
    """The instance a CLI command should talk to: the named one, or the only one running."""
    if name is not None:
        paths = instance_paths(name, root)
        if not is_running(paths):
            raise NotRunningError(f"no running wsup instance named {name!r}: start one with `wsup start APP`")
        return paths
    running = running_instances(root)
    if not running:
        raise NotRunningError("no running wsup instance: start one with `wsup start APP`")
    if len(running) > 1:
        names = ", ".join(p.name for p in running)
        raise AmbiguousInstanceError(f"several instances are running ({names}): pass --name to choose one")
    return running[0]

"""The per-instance run directory: where an instance's ZeroMQ endpoints, lock and description live.

Layout: ``<root>/<name>/`` (mode 0700) holds ``control`` (CLI requests), ``stats`` (worker reports), ``bus-in`` and
``bus-out`` (the broadcast proxy), ``lock`` (held by the supervisor for its whole life, so a ``kill -9`` releases it),
``instance.json`` and, with ``--daemon``, ``wsup.log``. The root is chosen by ``ipc.run_dirs.default_root`` and
every directory and file is opened through ``ipc.run_dirs`` (no link followed, ownership and mode checked first).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ipc import locator, run_dirs
from ipc.errors import (
    AlreadyRunningError,
    AmbiguousInstanceError,
    ConfigError,
    NotRunningError,
    RunDirectoryGoneError,
)
from ipc.run_dirs import RUN_DIR_ENV

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_IPC_PATH = 107
_MAX_INFO_BYTES = 64 * 1024
# What a supervisor creates in its instance directory, and so all it ever removes (the log stays for the user).
_LEAVES = ("control", "stats", "bus-in", "bus-out", "instance.json", ".instance.json.tmp", "lock")
_ENDPOINTS = ("control", "stats", "bus-in", "bus-out", "instance.json")


def runtime_root() -> Path:
    """The directory that holds one subdirectory per instance of this user (see ``run_dirs.default_root``)."""
    return run_dirs.default_root()


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

    @property
    def root(self) -> Path:
        return self.directory.parent

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
    base = Path(os.path.abspath(root or runtime_root()))
    paths = InstancePaths(validate_name(name), base / name)
    longest = len(str(paths.directory / "control"))
    if longest > _MAX_IPC_PATH:
        raise ConfigError(
            f"run directory {paths.directory} is too long for a Unix socket path ({longest} > {_MAX_IPC_PATH} bytes):"
            f" set {RUN_DIR_ENV} to a shorter directory"
        )
    return paths


class InstanceDir:
    """The verified directories of one instance, held open by fd (the root's and the instance's own)."""

    def __init__(self, paths: InstancePaths, *, create: bool) -> None:
        self.paths = paths
        self.root_fd = run_dirs.open_root(paths.root, create=create)
        try:
            self.fd = run_dirs.open_dir_in(self.root_fd, paths.name, paths.directory, create=create)
        except BaseException:
            os.close(self.root_fd)
            raise

    def open_log(self) -> int:
        """``wsup.log`` for appending (the ``--daemon`` output), created 0600, never through a link."""
        return run_dirs.open_file(self.fd, "wsup.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.paths.log_file)

    def close(self) -> None:
        for fd in (self.fd, self.root_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self.root_fd = -1


class InstanceLock:
    """The supervisor's claim on an instance name: an flock the kernel drops when the process dies."""

    def __init__(self, paths: InstancePaths) -> None:
        self.paths = paths
        self._dir = InstanceDir(paths, create=True)
        try:
            self._fd = run_dirs.open_file(self._dir.fd, "lock", os.O_RDWR | os.O_CREAT, paths.lock_file)
        except BaseException:
            self._dir.close()
            raise
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._dir.close()
            raise AlreadyRunningError(
                f"an instance named {paths.name!r} is already running: stop it first or pass another --name"
            ) from None
        # Endpoints left by a supervisor that was killed would make bind() fail: we own the name now.
        run_dirs.remove_leaves(self._dir.fd, _ENDPOINTS)

    def write_info(self, info: dict[str, Any]) -> None:
        data = orjson.dumps(info, option=orjson.OPT_INDENT_2)
        run_dirs.write_file(self._dir.fd, "instance.json", data, self.paths.info_file)

    def release(self) -> None:
        """Remove what this supervisor created, then its directory if nothing else is left in it, then drop the
        lock (in that order, so a new owner finds it clean). Nothing wsup did not create is ever removed."""
        if self._fd < 0:
            return
        run_dirs.remove_leaves(self._dir.fd, _LEAVES)
        with contextlib.suppress(OSError):  # not empty (the --daemon log stays), or already gone
            os.rmdir(self.paths.name, dir_fd=self._dir.root_fd)
        os.close(self._fd)
        self._fd = -1
        self._dir.close()


def _open_existing(paths: InstancePaths) -> InstanceDir | None:
    try:
        return InstanceDir(paths, create=False)
    except FileNotFoundError:
        return None


def is_running(paths: InstancePaths) -> bool:
    """True while a supervisor holds the instance's lock."""
    found = _open_existing(paths)
    if found is None:
        return False
    try:
        fd = os.open("lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=found.fd)
    except OSError:
        return False
    finally:
        found.close()
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def read_info(paths: InstancePaths) -> dict[str, Any]:
    found = _open_existing(paths)
    data = None
    if found is not None:
        try:
            data = run_dirs.read_file(found.fd, "instance.json", _MAX_INFO_BYTES)
        finally:
            found.close()
    try:
        info = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        info = None
    return info if isinstance(info, dict) else {"name": paths.name}


def running_instances(root: Path | None = None) -> list[InstancePaths]:
    base = Path(os.path.abspath(root or runtime_root()))
    try:
        root_fd = run_dirs.open_root(base, create=False)
    except FileNotFoundError:
        return []
    try:
        with os.scandir(root_fd) as entries:
            names = sorted(e.name for e in entries if _NAME_RE.match(e.name) and e.is_dir(follow_symlinks=False))
    finally:
        os.close(root_fd)
    found = []
    for name in names:
        paths = InstancePaths(name, base / name)
        with contextlib.suppress(ConfigError):  # an entry that is not ours is not one of our instances
            if is_running(paths):
                found.append(paths)
    return found


def find_instance(name: str | None, root: Path | None = None) -> InstancePaths:
    """The instance a CLI command should talk to: the named one, or the only one running. Looked for in the run
    root first, then through the locators of this user's supervisors: in that root (its directory was deleted) if
    the root was named (``root`` or ``$WSUP_RUN_DIR``), else in any (started with another environment)."""
    base = root or runtime_root()
    anywhere = root is None and not os.environ.get(RUN_DIR_ENV)
    if name is not None:
        paths = instance_paths(name, base)
        return paths if is_running(paths) else _locate(name, base, anywhere)
    running = running_instances(base)
    if len(running) > 1:
        names = ", ".join(p.name for p in running)
        raise AmbiguousInstanceError(f"several instances are running ({names}): pass --name to choose one")
    return running[0] if running else _locate(None, base, anywhere)


def _locate(name: str | None, base: Path, anywhere: bool) -> InstancePaths:
    reachable: list[InstancePaths] = []
    gone: list[locator.Located] = []
    for found in locator.find(name, root=None if anywhere else Path(os.path.abspath(base))):
        paths = InstancePaths(found.name, found.directory)
        try:
            alive = is_running(paths)
        except ConfigError:  # its directory is no longer a private one of ours: as good as gone
            alive = False
        if alive:
            reachable.append(paths)
        else:
            gone.append(found)
    what = f"named {name!r} " if name is not None else ""
    if len(reachable) + len(gone) > 1:
        where = ", ".join(sorted({str(p.directory) for p in reachable} | {str(g.directory) for g in gone}))
        raise AmbiguousInstanceError(
            f"wsup instances {what}run in several run directories ({where}): pass --name, or set {RUN_DIR_ENV}"
            " to the parent of one of them"
        )
    if reachable:
        return reachable[0]
    if gone:
        lost = gone[0]
        raise RunDirectoryGoneError(
            f"wsup instance {lost.name!r} runs (supervisor pid {lost.pid}) but its run directory {lost.directory}"
            f" is gone: `wsup stop`/`reload` reach it by signal, or `kill -TERM {lost.pid}` stops it",
            lost.pid,
        )
    elsewhere = " nor in any other run directory of yours" if anywhere else ""
    raise NotRunningError(
        f"no running wsup instance {what}in {base} (the run directory; {RUN_DIR_ENV} chooses another){elsewhere}:"
        " start one with `wsup start APP`"
    )

"""Private run directories, opened without ever following a link someone else could have planted.

Shared by the CLI and the supervisor process. A run root (and each instance directory inside it) is reached from
``/`` one component at a time with ``O_NOFOLLOW`` and directory fds, so what is checked is what is used:

- every ancestor must belong to root or to us and must not be writable by others unless it is sticky (``/tmp``);
  a symbolic link on the way is followed only if it belongs to root or to us (``/var/run -> /run``), never one
  planted by another user;
- the directory itself is never a link, belongs to us, and is not writable by anyone else (group or other read
  bits are removed with ``fchmod`` on the opened fd; write bits are refused: someone may have planted files);
- files inside are created and opened relative to the directory's fd with ``O_NOFOLLOW`` and checked to be regular
  files of ours with one link, and only the leaves wsup itself creates are ever removed.

Every failure is a ``ConfigError`` with one line that says which path is wrong and how to choose another.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from pathlib import Path

from ipc.errors import ConfigError

RUN_DIR_ENV = "WSUP_RUN_DIR"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINK_HOPS = 40  # as the kernel's own limit on nested symbolic links


def default_root() -> Path:
    """Where this user's instances live: ``$WSUP_RUN_DIR``; for root ``/run/wsup``; else ``$XDG_RUNTIME_DIR/wsup``,
    else ``/tmp/wsup-<uid>`` (checked like any other, so another user who made it first is refused, not trusted)."""
    explicit = os.environ.get(RUN_DIR_ENV)
    if explicit:
        return Path(explicit)
    uid = os.getuid()
    if uid == 0 and os.path.isdir("/run"):
        return Path("/run/wsup")  # root-only; /tmp/wsup-0 could be made first by anyone
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        with contextlib.suppress(OSError):
            info = os.stat(xdg)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == uid:
                return Path(xdg) / "wsup"
    return Path(f"/tmp/wsup-{uid}")


def _refuse(path: str, why: str) -> ConfigError:
    return ConfigError(f"run directory {path}: {why}; refusing to use it (set {RUN_DIR_ENV} to a directory of yours)")


def _check_ancestor(fd: int, shown: str) -> None:
    info = os.fstat(fd)
    if info.st_uid not in (0, os.getuid()):
        raise _refuse(shown, f"it lies under a directory of uid {info.st_uid}")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise _refuse(shown, f"it lies under a directory writable by other users (mode {stat.S_IMODE(info.st_mode):o})")


def _open_trusted_parent(path: str) -> int:
    """Open the existing directory ``path`` (absolute) and check every component on the way; return its fd."""
    uid = os.getuid()
    here = "/"
    fd = os.open("/", _DIR_FLAGS)
    parts = deque(p for p in os.path.normpath(path).split("/") if p)
    hops = 0
    try:
        _check_ancestor(fd, "/")
        while parts:
            part = parts.popleft()
            info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                if info.st_uid not in (0, uid):
                    raise _refuse(path, f"{os.path.join(here, part)} is a symbolic link of uid {info.st_uid}")
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise _refuse(path, "too many levels of symbolic links")
                # Lexically resolved against the path walked so far, which holds no untrusted link; then walked
                # again from / with the same checks.
                target = os.path.normpath(os.path.join(here, os.readlink(part, dir_fd=fd)))
                parts.extendleft(reversed([p for p in target.split("/") if p]))
                os.close(fd)
                fd, here = os.open("/", _DIR_FLAGS), "/"
                continue
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, here = child, os.path.join(here, part)
            _check_ancestor(fd, here)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_private(parent_fd: int, name: str, shown: str, *, create: bool) -> int:
    """Open (or create, mode 0700) the directory ``name`` in ``parent_fd``: never a link, ours, not writable by
    others; group/other read bits are removed through the fd."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW met a link (O_DIRECTORY says ENOTDIR first)
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
            raise _refuse(shown, "it is a symbolic link" if is_link else "it is not a directory") from None
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise _refuse(shown, f"it belongs to uid {info.st_uid}, not to you (uid {os.getuid()})")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o022:
            raise _refuse(shown, f"it is writable by other users (mode {mode:o}): remove it or `chmod 700` it")
        if mode & 0o077:
            os.fchmod(fd, 0o700)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _describe(exc: OSError, path: Path) -> ConfigError:
    reason = exc.strerror or str(exc)
    return ConfigError(f"cannot open run directory {path}: {reason} (set {RUN_DIR_ENV} to a directory of yours)")


def open_root(root: Path, *, create: bool) -> int:
    """The verified run root's fd. ``create`` makes it (mode 0700) if it is missing; else FileNotFoundError."""
    absolute = os.path.abspath(root)
    parent, name = os.path.split(absolute.rstrip("/"))
    if not name:
        raise ConfigError(f"{RUN_DIR_ENV} cannot be {root}")
    try:
        parent_fd = _open_trusted_parent(parent)
    except FileNotFoundError:
        if not create:
            raise
        raise ConfigError(f"cannot create run directory {root}: {parent} does not exist") from None
    except PermissionError as exc:
        raise _describe(exc, root) from None
    try:
        return _open_private(parent_fd, name, absolute, create=create)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise _describe(exc, root) from None
    finally:
        os.close(parent_fd)


def open_dir_in(parent_fd: int, name: str, shown: Path, *, create: bool) -> int:
    """An instance directory inside a verified root (see ``_open_private``)."""
    try:
        return _open_private(parent_fd, name, str(shown), create=create)
    except PermissionError as exc:
        raise _describe(exc, shown) from None


def open_file(dir_fd: int, name: str, flags: int, shown: Path, mode: int = 0o600) -> int:
    """Open a file inside a verified directory without following links; it must be a regular file of ours with one
    link (a hard link to a file elsewhere would make us write there)."""
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
            why = f"{name} is not a private regular file (uid {info.st_uid}, {info.st_nlink} links)"
            raise _refuse(str(shown), why)
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_file(dir_fd: int, name: str, data: bytes, shown: Path) -> None:
    """Replace ``name`` atomically (a temporary file renamed over it; a rename never writes through a link)."""
    tmp = f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = open_file(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, shown)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of a regular file in a verified directory; None if it is missing or not regular."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def remove_leaves(dir_fd: int, names: tuple[str, ...]) -> None:
    """Unlink the files wsup created, by name in the directory's fd; anything else is left where it is."""
    for name in names:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(name, dir_fd=dir_fd)

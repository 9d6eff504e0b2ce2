"""Finding a supervisor without its run directory: a listening socket in Linux's abstract namespace per instance.

The run directory is the normal way in, but it can vanish under a running instance (a tmp cleaner, a logout that
empties ``XDG_RUNTIME_DIR``) or be another one than the caller's (systemd vs an SSH login). So each supervisor also
listens on ``@wsup/<uid>/<hash of its run root>/<name>``: nothing on disk to delete, released by the kernel when
the process dies, and listed in ``/proc/net/unix``. A connecting CLI learns the supervisor's pid and uid from the
kernel (``SO_PEERCRED``), so a socket planted by another user is recognised and ignored; the supervisor answers
one JSON line (its pid and run directory) only to its own user and to root.

Used by the supervisor (``Locator.claim`` then ``serve``) and by the CLI (``find``); Linux only, like wsup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from ipc.errors import AlreadyRunningError

logger = logging.getLogger("wsup.locator")

_PREFIX: Final = "wsup/"
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ANSWER_LIMIT: Final = 4096
QUERY_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Located:
    """A supervisor that answered: its pid (from the kernel), name and run directory (from its answer)."""

    name: str
    pid: int
    directory: Path


def _root_prefix(uid: int, root: Path) -> str:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:16]
    return f"{_PREFIX}{uid}/{digest}/"


def address(uid: int, root: Path, name: str) -> str:
    return _root_prefix(uid, root) + name


def _peer(sock: socket.socket) -> tuple[int, int]:
    pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def query(name: str, where: str, uid: int | None = None) -> Located | None:
    """Ask the supervisor listening at ``where``; None if nobody listens or the listener is not ``uid``'s."""
    expected = os.getuid() if uid is None else uid
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(QUERY_TIMEOUT_S)
        try:
            sock.connect("\0" + where)
            pid, peer_uid = _peer(sock)
            if peer_uid != expected:
                return None  # someone else's socket under our name: never trusted
            data = b""
            while b"\n" not in data and len(data) < _ANSWER_LIMIT:
                chunk = sock.recv(_ANSWER_LIMIT)
                if not chunk:
                    break
                data += chunk
            answer = orjson.loads(data.split(b"\n", 1)[0])
        except (OSError, orjson.JSONDecodeError):
            return None
    directory = answer.get("directory") if isinstance(answer, dict) else None
    if not isinstance(directory, str) or answer.get("name") != name or answer.get("pid") != pid:
        return None
    return Located(name, pid, Path(directory))


def listening(uid: int | None = None, root: Path | None = None) -> list[tuple[str, str]]:
    """(name, address) of every wsup locator of ``uid`` (in run root ``root``, if given) the kernel lists."""
    owner = os.getuid() if uid is None else uid
    prefix = "@" + (_root_prefix(owner, root) if root is not None else f"{_PREFIX}{owner}/")
    found: set[tuple[str, str]] = set()
    try:
        with open("/proc/net/unix", "rb") as table:
            lines = table.read(16 << 20).decode("utf-8", "replace").splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith(prefix):
            where = fields[7][1:]
            found.add((where.rsplit("/", 1)[-1], where))
    return sorted(found)


def find(name: str | None = None, uid: int | None = None, root: Path | None = None) -> list[Located]:
    """Every running instance of ``uid`` (named ``name``, if given) in run root ``root``, or in any if None."""
    located = []
    for found_name, where in listening(uid, root):
        if name is None or found_name == name:
            answer = query(found_name, where, uid)
            if answer is not None:
                located.append(answer)
    return located


class Locator:
    """The supervisor's side: holds the name in the abstract namespace and answers who and where it is."""

    def __init__(self, sock: socket.socket | None, answer: bytes) -> None:
        self._sock = sock
        self._answer = answer
        self.refused = 0  # connections from other users, closed unanswered

    @classmethod
    def claim(cls, name: str, directory: Path) -> Locator:
        """Take the name, or raise AlreadyRunningError if a supervisor of ours holds it (even one whose run
        directory was deleted). A name held by another user does not stop us: we run without a locator."""
        where = address(os.getuid(), directory.parent, name)
        answer = orjson.dumps({"name": name, "pid": os.getpid(), "directory": str(directory)}) + b"\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + where)
        except OSError:
            sock.close()
            holder = query(name, where)
            if holder is not None:
                raise AlreadyRunningError(
                    f"an instance named {name!r} is already running (supervisor pid {holder.pid}, run directory"
                    f" {holder.directory}): stop it first or pass another --name"
                ) from None
            logger.warning("locator @%s is held by another process: running without it", where)
            return cls(None, answer)
        sock.listen(64)
        sock.setblocking(False)
        return cls(sock, answer)

    async def serve(self) -> None:
        if self._sock is None:
            await asyncio.Event().wait()  # nothing to serve; stay a quiet supervised task
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        own = os.getuid()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            with conn, contextlib.suppress(OSError):
                _, uid = _peer(conn)
                if uid not in (own, 0):
                    self.refused += 1
                    continue
                conn.send(self._answer)  # a fresh socket's buffer always takes one short line: never blocks

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

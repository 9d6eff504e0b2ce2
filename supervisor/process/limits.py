"""The host limits that bound how many connections an instance holds: raised where an unprivileged process may,
and reported in ``wsup status`` so an operator sees what caps the instance before clients find out.

Workers inherit the supervisor's limits (they are started after it raises them).
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Any

logger = logging.getLogger("wsup.supervisor")
MAX_OPEN_FILES = 1 << 20  # a hard limit of "unlimited" still needs a number; the kernel's nr_open default


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (every connection is a file descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            logger.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return int(soft)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def describe_limits(backlog: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    somaxconn = _read_int("/proc/sys/net/core/somaxconn")
    return {
        "open_files": soft if soft != resource.RLIM_INFINITY else None,  # per process: each worker's connections
        "open_files_hard": hard if hard != resource.RLIM_INFINITY else None,
        "somaxconn": somaxconn,
        # The kernel silently caps listen()'s backlog at somaxconn: a connection storm past it is dropped.
        "accept_queue": min(backlog, somaxconn) if somaxconn else backlog,
    }

"""The environment of every process wsup spawns (the detached supervisor, each worker): wsup's packages importable,
whether it runs from a checkout (``bin/wsup``) or from an install."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), _PACKAGE_ROOT) if p)
    return env

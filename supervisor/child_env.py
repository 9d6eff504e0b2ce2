"""How wsup starts a Python process of its own (the detached supervisor, each worker): the same interpreter, and
wsup's own packages importable from where this code was loaded, whatever the install mode (a checkout's
``bin/wsup``, an editable install, a regular one).

Only ``supervisor`` and ``ipc`` are made importable, by a finder for those two names. The directory that holds them
is never put on ``sys.path`` or ``PYTHONPATH``: in a checkout it also holds the demo ``app`` package, which would
shadow a user's own ``app`` (even from the end of the path, a regular package wins over a namespace package).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
OWN_PACKAGES = ("supervisor", "ipc")

# Run by ``python -c`` with argv ``[-c, ROOT, MODULE, *args]``: install the finder, then run MODULE as __main__.
_BOOTSTRAP = f"""\
import importlib.machinery, runpy, sys
root, module = sys.argv[1], sys.argv[2]
class WsupPackages:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if path is None and name in {OWN_PACKAGES!r}:
            return importlib.machinery.PathFinder.find_spec(name, [root])
        return None
sys.meta_path.insert(0, WsupPackages)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def python_module(module: str, *args: str) -> list[str]:
    """The command line of ``python -m module args...`` with wsup's packages taken from ``PACKAGE_ROOT``."""
    return [sys.executable, "-c", _BOOTSTRAP, PACKAGE_ROOT, module, *args]


def child_env() -> dict[str, str]:
    return dict(os.environ)

"""Import the user's ASGI application from ``module:attribute``, the way uvicorn does, with errors that help."""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

from ipc.errors import AppLoadError
from ipc.settings import validate_app_path


def _last_frame_summary(exc: BaseException) -> str:
    """The innermost frame of a traceback, so 'where' is in the one-line error."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    if not frames or isinstance(exc, SyntaxError):  # a SyntaxError names its file and line itself
        return ""
    last = frames[-1]
    return f" ({last.filename}:{last.lineno})"


def load_app(app: str, *, factory: bool = False, app_dir: str = ".") -> Any:
    """Return the ASGI callable named by ``app``; raise AppLoadError naming what failed and what to do."""
    validate_app_path(app)
    module_name, _, attribute = app.partition(":")
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(
                f"could not import module {module_name!r}: {exc}; run wsup from the directory that contains it"
                " or pass --app-dir"
            ) from exc
        raise AppLoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:  # the user's module may raise anything at import, even SystemExit
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}{_last_frame_summary(exc)}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            where = getattr(module, "__file__", None) or "a namespace package: " + ", ".join(
                getattr(module, "__path__", [])
            )
            raise AppLoadError(
                f"module {module_name!r} (imported from {where}) has no attribute {attribute!r}: check the APP"
                " argument, or whether another module of that name shadows yours"
            ) from None
    if factory:
        if not callable(target):
            raise AppLoadError(f"--factory was given but {app!r} is not callable")
        try:
            target = target()
        except BaseException as exc:
            raise AppLoadError(f"the factory {app!r} raised {type(exc).__name__}: {exc}") from exc
    if not callable(target):
        raise AppLoadError(f"{app!r} is not an ASGI application (got {type(target).__name__}); did you mean --factory?")
    return target

"""The typed errors of wsup. Library code raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class WsupError(Exception):
    """Base of every error wsup raises on purpose. The message is one line a user can act on."""

    exit_code = 1


class ConfigError(WsupError):
    """A bad command-line value or setting (bad -i, bad APP path syntax, bad address)."""

    exit_code = 2


class AppLoadError(WsupError):
    """The user's ASGI application could not be imported or did not start."""


class PortInUseError(WsupError):
    """The requested address is already bound by another process."""


class AlreadyRunningError(WsupError):
    """An instance with the requested name is already running."""


class NotRunningError(WsupError):
    """No running instance matches the request."""

    exit_code = 3


class RunDirectoryGoneError(NotRunningError):
    """An instance runs (its locator answered) but its run directory was deleted, so its sockets are unreachable."""

    def __init__(self, reason: str, pid: int = 0) -> None:
        super().__init__(reason)
        self.pid = pid


class AmbiguousInstanceError(WsupError):
    """Several instances are running and the request did not name one."""

    exit_code = 2


class SupervisorTimeoutError(WsupError):
    """The supervisor did not answer within the deadline."""

    exit_code = 4


class ProtocolError(WsupError):
    """A message on a ZeroMQ socket was malformed, of an unknown type or version, or too large."""


class RemoteError(WsupError):
    """The supervisor answered a control request with an error."""

    def __init__(self, reason: str, kind: str = "WsupError") -> None:
        super().__init__(reason)
        self.kind = kind


class ReloadInProgressError(WsupError):
    """A reload (or scale) was requested while another one runs."""


class OperationInterruptedError(WsupError):
    """A reload, scale or restart was ended because the instance began to stop."""


class ReloadFailedError(WsupError):
    """A replacement worker did not become ready; the old workers keep serving."""


class StartupError(WsupError):
    """The instance could not be started; nothing was left running."""


def error_from_kind(kind: str, reason: str) -> WsupError:
    """Rebuild a typed error that crossed a process boundary as (class name, message)."""
    cls = globals().get(kind)
    if isinstance(cls, type) and issubclass(cls, WsupError) and cls is not RemoteError:
        return cls(reason)
    return RemoteError(reason, kind)


class BusError(WsupError):
    """The broadcast bus refused a request: a bad channel name, an unpublishable message, no bus to confirm."""


class MessageTooLargeError(BusError):
    """A published message is larger than the bus's configured maximum (``--bus-max-bytes``)."""

    exit_code = 2


class SlowConsumerError(BusError):
    """An in-process subscriber fell behind its backlog under the ``disconnect`` policy and was unsubscribed."""

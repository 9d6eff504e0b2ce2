"""Publishing into a running instance from outside it (scripts, cron jobs, task queues): the write-only emitter.

The message goes over the instance's control socket to the supervisor, which publishes it on the bus and answers
once it is handed over. A short-lived ZeroMQ publisher of its own would silently drop its first messages.
"""

from __future__ import annotations

import base64

from ipc import control
from ipc.bus_wire import Kind, encode_payload, validate_channel
from ipc.endpoints import find_instance
from ipc.errors import MessageTooLargeError
from ipc.messages import MAX_MESSAGE_BYTES, JSONObject, Request, encode

_REQUEST_ID = "0" * 32  # the size of a real request id, to measure the request before sending it


def publish_args(channel: str, message: object) -> JSONObject:
    """The ``publish`` control command's arguments for ``message`` (str/JSON as text, bytes as base64)."""
    validate_channel(channel)
    kind, payload = encode_payload(message)
    if kind is Kind.TEXT:
        return {"channel": channel, "text": payload.decode("utf-8")}
    return {"channel": channel, "base64": base64.b64encode(payload).decode("ascii")}


def publish_to_instance(channel: str, message: object, *, name: str | None = None, timeout: float = 5.0) -> JSONObject:
    """Publish ``message`` to ``channel`` in the running instance ``name`` (default: the only one running).

    Blocking (a script has no event loop to share). Returns ``{"channel", "bytes", "seq", "origin"}``. Raises
    NotRunningError, AmbiguousInstanceError, SupervisorTimeoutError, BusError or MessageTooLargeError: above
    the instance's ``--bus-max-bytes``, or above what one control message carries (256 KiB, base64 counted):
    publish larger messages from inside a worker.
    """
    args = publish_args(channel, message)
    size = len(encode(Request(id=_REQUEST_ID, cmd="publish", args=args)))
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"message too large to publish from outside a worker: {size} bytes as a control request, over the"
            f" {MAX_MESSAGE_BYTES}-byte limit of the control socket; publish it from a worker instead"
        )
    paths = find_instance(name)
    return control.call(paths.control, "publish", args, timeout=timeout)

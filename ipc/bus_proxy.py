"""The supervisor's side of the bus: an XSUB/XPUB proxy in a thread, and the supervisor's own publisher.

Workers' PUBs connect to the XSUB at ``bus-in``; their SUBs connect to the XPUB at ``bus-out``. XPUB filters by
the subscriptions it hears from each SUB, so a worker receives only channels it has local members in. The XSUB
itself subscribes to everything upstream: a publisher then never drops a message for a subscription it has not
heard of yet (ZeroMQ's "slow joiner"), and the only filter is the XPUB's, which knows every subscription first.

``wsup publish`` and ``broadcast.publish_to_instance`` reach the bus through the control socket and this
publisher, because a short-lived PUB of their own would drop its first messages for the same slow-joiner reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import threading
from typing import Any, Final

import zmq

from ipc.bus_wire import (
    BUS_HWM,
    INTERNAL_PREFIX,
    SUBSCRIPTION_MAX_BYTES,
    Kind,
    check_size,
    encode,
    frame_limit,
    topic,
    validate_channel,
)
from ipc.errors import BusError, StartupError
from ipc.messages import JSONObject

logger = logging.getLogger("wsup.bus")

PUBLISHER_CONFIRM_S: Final = 5.0


class BusProxy:
    """Binds the bus endpoints, forwards between them in a thread until ``close``, and publishes for the CLI."""

    def __init__(self, bus_in: str, bus_out: str, *, max_bytes: int, hwm: int = BUS_HWM) -> None:
        self.max_bytes = max_bytes
        self.origin = os.getpid()
        self.published = 0
        self._bus_out = bus_out
        self._seqs: dict[str, int] = {}
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket[bytes]] = []
        self._thread: threading.Thread | None = None
        try:
            self._xsub = self._socket(zmq.XSUB, zmq.RCVHWM, hwm, frame_limit(max_bytes))
            self._xsub.bind(bus_in)
            self._xsub.send(b"\x01")  # subscribe to every channel: see the module docstring
            self._xpub = self._socket(zmq.XPUB, zmq.SNDHWM, hwm, SUBSCRIPTION_MAX_BYTES)
            self._xpub.bind(bus_out)
            control = f"inproc://wsup-bus-control-{id(self)}"
            self._control = self._socket(zmq.PAIR, zmq.SNDHWM, 1)
            self._control.bind(control)
            self._control_peer = self._socket(zmq.PAIR, zmq.RCVHWM, 1)
            self._control_peer.connect(control)
            self._publisher = self._socket(zmq.PUB, zmq.SNDHWM, hwm)
            self._publisher.setsockopt(zmq.XPUB_NODROP, 1)
            self._publisher.connect(bus_in)
        except zmq.ZMQError as exc:
            self.close()
            raise StartupError(f"cannot open the broadcast bus at {bus_in} / {bus_out}: {exc}") from None

    def _socket(self, kind: int, hwm_option: int, hwm: int, max_frame: int = -1) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(hwm_option, hwm)
        # Frames larger than any valid one are refused by ZeroMQ before they are read into memory (-1: no limit,
        # for the in-process sockets).
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        self._sockets.append(sock)
        return sock

    async def start(self) -> None:
        """Start forwarding, then make sure the supervisor's own publisher is heard before anyone uses it."""
        self._thread = threading.Thread(target=self._run, name="wsup-bus-proxy", daemon=True)
        self._thread.start()
        await self._confirm_publisher()

    def _run(self) -> None:
        try:
            # The sockets were made in the supervisor's thread; starting this thread is the memory barrier
            # ZeroMQ asks for before a socket moves to another thread, and only this thread uses them from now.
            zmq.proxy_steerable(self._xsub, self._xpub, None, self._control_peer)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            logger.error("bus proxy stopped: %s", exc)

    async def _confirm_publisher(self) -> None:
        name = f"{INTERNAL_PREFIX}sync.{self.origin}"
        probe = self._context.socket(zmq.SUB)
        probe.setsockopt(zmq.LINGER, 0)
        try:
            probe.connect(self._bus_out)
            probe.setsockopt(zmq.SUBSCRIBE, topic(name))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PUBLISHER_CONFIRM_S
            while loop.time() < deadline:
                try:
                    self._publisher.send_multipart(encode(topic(name), Kind.PROBE, self.origin, 0, 0, b""), zmq.NOBLOCK)
                except zmq.Again:
                    pass
                await asyncio.sleep(0.01)
                if probe.poll(0):
                    return
            logger.warning("bus: the supervisor's publisher was not confirmed in %gs", PUBLISHER_CONFIRM_S)
        finally:
            probe.close(linger=0)

    def publish(self, channel: str, kind: Kind, payload: bytes) -> int:
        """Publish as the supervisor; return the message's sequence number on ``channel``."""
        validate_channel(channel)
        check_size(payload, self.max_bytes)
        seq = self._seqs.get(channel, 0) + 1
        try:
            self._publisher.send_multipart(encode(topic(channel), kind, self.origin, seq, 0, payload), zmq.NOBLOCK)
        except zmq.Again:
            raise BusError("the bus is saturated (its queue to the proxy is full): message not published") from None
        self._seqs[channel] = seq
        self.published += 1
        return seq

    def handle_command(self, args: JSONObject) -> JSONObject:
        """The ``publish`` control command: ``{"channel": ..., "text": ...}`` or ``{"channel": ..., "base64": ...}``."""
        channel = args.get("channel")
        text: Any = args.get("text")
        encoded: Any = args.get("base64")
        if (text is None) == (encoded is None):
            raise BusError("publish needs exactly one of 'text' (a str) and 'base64' (bytes, base64-encoded)")
        if text is not None:
            if not isinstance(text, str):
                raise BusError(f"publish 'text' must be a str, got {type(text).__name__}")
            try:
                kind, payload = Kind.TEXT, text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BusError(f"publish 'text' is not encodable as UTF-8: {exc}") from None
        else:
            if not isinstance(encoded, str):
                raise BusError(f"publish 'base64' must be a str, got {type(encoded).__name__}")
            try:
                kind, payload = Kind.BINARY, base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise BusError(f"publish 'base64' is not valid base64: {exc}") from None
        seq = self.publish(validate_channel(channel), kind, payload)
        return {"channel": channel, "bytes": len(payload), "seq": seq, "origin": self.origin}

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._control.send(b"TERMINATE")
            self._thread.join(5.0)
            if self._thread.is_alive():  # never seen; the thread is a daemon, so it cannot keep the process alive
                logger.error("bus proxy thread did not stop")
                return
        for sock in self._sockets:
            sock.close(linger=0)
        self._context.term()

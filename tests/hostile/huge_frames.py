"""Attacker process for the hostile-frame test: sends 10 MB frames to each endpoint of an instance and reports how
often each endpoint cut it off (ZMQ_MAXMSGSIZE refuses a frame by dropping the connection).

Run as ``python -m tests.hostile.huge_frames RUN_DIR COUNT``, in a process of its own: libzmq in the *sender*
crashed on context termination after such a refusal, which must not take the test runner with it.
"""

from __future__ import annotations

import os
import sys
import time

import orjson
import zmq
from zmq.utils.monitor import recv_monitor_message

TARGETS = {"stats": zmq.PUSH, "control": zmq.DEALER, "bus-in": zmq.PUB, "bus-out": zmq.XSUB}


def main(directory: str, count: int) -> None:
    context = zmq.Context()
    huge = b"\x00" * (10 << 20)
    refused: dict[str, int] = {}
    for leaf, kind in TARGETS.items():
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(f"ipc://{directory}/{leaf}")
        refused[leaf] = 0
        deadline = time.monotonic() + 60
        while refused[leaf] < count and time.monotonic() < deadline:
            # One frame at a time, so every one reaches the endpoint (a refusal drops what is queued behind it).
            sock.send(b"\x01" + huge if kind == zmq.XSUB else huge, copy=True)
            if monitor.poll(10_000):
                recv_monitor_message(monitor)
                refused[leaf] += 1
    print(orjson.dumps(refused).decode(), flush=True)
    os._exit(0)  # see the module docstring: no context termination


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

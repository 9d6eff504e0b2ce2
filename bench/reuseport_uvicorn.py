"""Plain uvicorn workers, each on its own SO_REUSEPORT listening socket: wsup's accept-queue layout without wsup.

A diagnostic for bench/throughput.py (``--servers ...,uvicorn-reuseport``). ``uvicorn --workers N`` shares one
listening socket (one accept queue) among its workers; wsup gives each worker a socket of its own in a reuseport
group, so that it can steer each connection to a worker. This server is uvicorn's own protocol and app on wsup's
layout, with the kernel's hash choosing the queue, so a gap between it and ``uvicorn --workers`` is the cost of the
layout alone, with no wsup code running.

    .venv/bin/python bench/reuseport_uvicorn.py --workers 2 --port 8000

Each worker is started with ``--child FD`` and serves the socket it inherited (as a TCP socket: uvicorn's own
``--fd`` would take it for a Unix socket and leave Nagle's algorithm on).
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from pathlib import Path

import uvicorn

REPO = Path(__file__).resolve().parent.parent
BACKLOG = 2048  # uvicorn's default


def serve_child(fd: int) -> None:
    sock = socket.socket(fileno=fd)  # the family and type are read from the socket itself
    sys.path.insert(0, str(REPO))  # the demo app, from any working directory
    config = uvicorn.Config("app:asgi", loop="uvloop", http="httptools", access_log=False, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        serve_child(args.child)
        return
    sockets = []
    for _ in range(args.workers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((args.host, args.port))
        sock.listen(BACKLOG)
        sockets.append(sock)
    children = [
        subprocess.Popen([sys.executable, __file__, "--child", str(sock.fileno())], pass_fds=(sock.fileno(),))
        for sock in sockets
    ]

    def stop(signum: int, frame: object) -> None:
        for child in children:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.wait()


if __name__ == "__main__":
    main()

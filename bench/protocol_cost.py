"""What wsup's HTTP protocol costs per request against uvicorn's own, replayed in-process (issue 11).

A worker's HTTP path is uvicorn's ``HttpToolsProtocol`` with wsup's overrides (``supervisor/worker/http_protocol.py``:
connection counts in the page shared with the supervisor, header size and time limits, the drain). This replays
requests through both classes on uvloop with the demo app and an in-memory transport, so nothing but the protocol
differs: ``Connection: close`` (a new protocol object per request) and keep-alive (one connection).

By default it times rounds and reports the fastest. ``--instructions`` runs each case under callgrind instead and
reports instructions per request (two request counts, differenced, so start-up cancels out): repeatable to ~1% on a
busy machine, where timings are not. Usage: ``python bench/protocol_cost.py [--instructions] [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvicorn  # noqa: E402
import uvloop  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

import app as demo  # noqa: E402
from supervisor.worker.http_limits import HttpLimits  # noqa: E402
from supervisor.worker.protocols import protocol_classes  # noqa: E402
from supervisor.worker.worker_connections import WorkerConnections  # noqa: E402

REQUESTS = {
    "close": b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "keep-alive": b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
}
PROTOCOLS: dict[str, Any] = {
    "uvicorn": HttpToolsProtocol,
    "wsup": protocol_classes(WorkerConnections(limits=HttpLimits()))[0],
}


class MemoryTransport:
    """What the protocol uses of a socket transport; a close is delivered to the protocol on the next loop turn."""

    def __init__(self) -> None:
        self.closing = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


async def replay(server: str, mode: str, requests: int) -> float:
    """Seconds per request."""
    cls = PROTOCOLS[server]
    config = uvicorn.Config(demo.asgi, http=cls, access_log=False, log_level="warning", lifespan="off")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    request = REQUESTS[mode]

    def connect() -> tuple[Any, MemoryTransport]:
        transport = MemoryTransport()
        protocol = cls(config, state, {}, loop)
        transport.protocol = protocol
        protocol.connection_made(transport)
        return protocol, transport

    started = time.perf_counter()
    if mode == "close":
        for _ in range(requests):
            protocol, transport = connect()
            protocol.data_received(request)
            while not transport.closing:
                await asyncio.sleep(0)
            await asyncio.sleep(0)  # connection_lost
    else:
        protocol, transport = connect()
        for _ in range(requests):
            protocol.data_received(request)
            while protocol.cycle is not None and not protocol.cycle.response_complete:
                await asyncio.sleep(0)
        transport.close()
    return (time.perf_counter() - started) / requests


def timed(rounds: int, requests: int) -> None:
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for mode in REQUESTS:
            for server in PROTOCOLS:
                seconds = uvloop.run(replay(server, mode, requests))
                best[server, mode] = min(best.get((server, mode), seconds), seconds)
    for mode in REQUESTS:
        uvicorn_us, wsup_us = best["uvicorn", mode] * 1e6, best["wsup", mode] * 1e6
        print(
            f"{mode:10}  uvicorn {uvicorn_us:6.2f} µs  wsup {wsup_us:6.2f} µs  "
            f"wsup/uvicorn {wsup_us / uvicorn_us:.3f}  (fastest of {rounds} rounds of {requests:,} requests)"
        )


def _callgrind_total(server: str, mode: str, requests: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
        subprocess.run([*command, "--one", server, mode, str(requests)], check=True, capture_output=True)
        with open(out, encoding="utf-8") as profile:
            found = re.search(r"^(?:summary|totals): (\d+)", profile.read(), re.MULTILINE)
    if found is None:
        raise SystemExit("bench/protocol_cost.py: callgrind wrote no total")
    return int(found.group(1))


def instructions(requests: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/protocol_cost.py: --instructions needs valgrind (apt-get install valgrind)")
    short = max(100, requests // 5)
    for mode in REQUESTS:
        per_request = {}
        for server in PROTOCOLS:
            total = _callgrind_total(server, mode, requests) - _callgrind_total(server, mode, short)
            per_request[server] = total / (requests - short)
        extra = per_request["wsup"] - per_request["uvicorn"]
        print(
            f"{mode:10}  uvicorn {per_request['uvicorn']:9,.0f}  wsup {per_request['wsup']:9,.0f} instructions"
            f" per request  wsup/uvicorn {per_request['wsup'] / per_request['uvicorn']:.3f} ({extra:+,.0f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--requests", type=int, default=None, help="requests per case (20,000; 2,500 counted)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the fastest is kept)")
    parser.add_argument("--one", nargs=3, metavar=("SERVER", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        server, mode, count = args.one
        uvloop.run(replay(server, mode, 200))  # imports, caches and the app's first call out of the count
        uvloop.run(replay(server, mode, int(count)))
    elif args.instructions:
        instructions(args.requests or 2500)
    else:
        timed(args.rounds, args.requests or 20_000)


if __name__ == "__main__":
    main()

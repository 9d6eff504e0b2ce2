"""What the HTTP limits add to each request in a worker (supervisor.worker.http_limits), in nanoseconds.

Replays, in-process, the work the limits add to one request on a keep-alive connection: the header-byte count in
``data_received``, the waiting-connection bookkeeping at message begin and headers complete. Compare with the
hundreds of microseconds a request costs a worker (``wrk`` against ``/health``). Usage: ``python
bench/http_limits_cost.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supervisor.worker.http_limits import ConnectionGuard, HttpLimits  # noqa: E402

REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


class _Connection:
    header_bytes = 0
    transport = None


def main(rounds: int) -> None:
    guard = ConnectionGuard(HttpLimits())
    conn = _Connection()
    limit = guard.limits.max_header_bytes

    def with_limits() -> None:
        counted = conn.header_bytes  # data_received
        if counted >= 0:
            total = counted + len(REQUEST)
            if total > limit:
                raise AssertionError("not reached")
            conn.header_bytes = total
        if conn.header_bytes < 0:  # on_message_begin
            conn.header_bytes = 0
        guard.wait(conn, idle=False)  # type: ignore[arg-type]
        conn.header_bytes = -1  # on_headers_complete
        guard.done(conn)  # type: ignore[arg-type]
        conn.header_bytes = 0

    def empty() -> None:
        pass

    n = 1_000_000
    for _ in range(rounds):
        cost = timeit.timeit(with_limits, number=n) / n * 1e9
        base = timeit.timeit(empty, number=n) / n * 1e9
        print(f"{cost - base:.0f} ns per request for the limits (an empty call: {base:.0f} ns)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

"""The worker's per-server connection state: close codes are counted within bounds a peer cannot push."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.errors import ProtocolError
from ipc.messages import Report, decode, encode
from supervisor.worker.protocols import MAX_CLOSE_CODES, WorkerConnections


def test_close_codes_are_bounded() -> None:
    connections = WorkerConnections()
    for code in (1000, 1000, 1012, 999, 5000):
        connections.closed_with(code)
    assert connections.describe_closes() == {"1000": 2, "1012": 1, "1006": 2}
    for code in range(4000, 4000 + 2 * MAX_CLOSE_CODES):  # a peer inventing codes
        connections.closed_with(code)
    assert len(connections.close_codes) == MAX_CLOSE_CODES
    assert sum(connections.close_codes.values()) == 5 + 2 * MAX_CLOSE_CODES


def test_report_closes_are_range_checked() -> None:
    def report(closes: dict[str, Any]) -> Report:
        return Report(
            pid=1, slot=0, generation=1, seq=1, http=0, websocket=0, in_flight=0, requests=0, websocket_sessions=3,
            loop_lag_ms=0.0, draining=False, dropped_reports=0, closes=closes,
        )  # fmt: skip

    assert decode(encode(report({"1000": 3}))) == report({"1000": 3})
    with pytest.raises(ProtocolError, match="'closes' has a bad counter"):
        decode(encode(report({"1000": -1})))

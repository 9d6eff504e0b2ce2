"""The drain's close race (defect 8): WebSocket clients closing at the very moment their draining worker closes
them. Each side's close crosses the other's; the worker must finish every closing handshake without a traceback
(``ipc.websocket_close`` leaves a connection already closing alone)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection

from tests.clients import close_all, open_websockets
from tests.wsup_harness import Instance

CLIENTS = 300


def test_clients_closing_during_a_drain_leave_no_traceback(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2", "--ws-drain-window", "1")
    wsup.wait_ready(2)

    async def scenario() -> None:
        connections = await open_websockets(f"{wsup.ws_url}/ws", CLIENTS)
        reload = asyncio.ensure_future(asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name))

        async def close_soon(ws: ClientConnection) -> None:
            # Spread over the drain window of the first slot, when the worker closes them too.
            await asyncio.sleep(random.uniform(0.5, 3.0))
            await close_all([(ws, 0)])

        await asyncio.gather(*(close_soon(ws) for ws, _ in connections))
        result = await reload
        assert result.returncode == 0, result.stderr

    asyncio.run(scenario())
    wsup.wait_ready(2)
    log = wsup.log()
    assert "Traceback" not in log and "InvalidState" not in log, log[-4000:]

"""HAProxy's agent-check, answered by the supervisor (supervised task ``agent``): one ASCII line per TCP connection
that tells the balancer in front whether to send this host new connections, and with which weight.

The answer is computed by ``agent_reply`` (pure) from the instance's live numbers and from the connections that
come from the asking balancer's address (``peer_counts``). HAProxy applies a percentage
to the server's configured weight (``weight 100`` on the ``server`` line gives it a useful resolution), and
``ready`` lifts a ``drain`` or ``maint`` state an earlier answer set, so every "up" answer carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ipc.errors import StartupError

logger = logging.getLogger("wsup.agent")

MIN_WEIGHT_PERCENT: Final = 1  # a full host still takes a trickle rather than none: 0% would mean "drain"
WRITE_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class HostLoad:
    """What the agent's answer is computed from: read from the fleet when HAProxy asks."""

    workers: int  # slots
    ready: int  # slots whose worker serves
    connections: int  # live HTTP and WebSocket connections of every worker, draining ones included
    draining: bool  # `wsup drain`
    stopping: bool
    from_balancer: int | None = None  # of the connections, those from the asking balancer (None: unknown)


def agent_reply(load: HostLoad) -> str:
    """The agent-check line for ``load``.

    HAProxy's leastconn picks the server with the fewest of *its own* connections per unit of weight. The weight
    is the share of the host's connections that this balancer made ((seen + 1) / (all + 1)), times the share of
    ready workers: with weight w, HAProxy's (seen + 1) / w is the host's real load, so leastconn balances what the
    hosts hold, including connections from elsewhere (another balancer, direct clients, connections kept across a
    balancer restart). A host whose connections all came through this balancer answers 100%.
    """
    if load.stopping:
        return "down#stopping\n"
    if load.draining:
        return "drain\n"
    if load.workers <= 0 or load.ready <= 0:
        return "down#no worker ready\n"
    share = min(load.ready, load.workers) / load.workers
    seen = 1.0
    if load.from_balancer is not None:
        total = max(0, load.connections)
        seen = (min(max(0, load.from_balancer), total) + 1) / (total + 1)
    weight = max(MIN_WEIGHT_PERCENT, min(100, round(100 * share * seen)))
    return f"up ready {weight}%\n"


class AgentServer:
    """Listens on ``--agent-host:--agent-port`` and writes one ``agent_reply`` per connection."""

    def __init__(self, host: str, port: int, load: Callable[[str], HostLoad]) -> None:
        self.host = host
        self.port = port
        self.answers = 0
        self.last: str | None = None
        self._load = load
        self._server: asyncio.Server | None = None
        self._drain_heard: list[asyncio.Future[None]] = []

    async def open(self) -> None:
        try:
            self._server = await asyncio.start_server(self._answer, self.host, self.port, reuse_address=True)
        except OSError as exc:
            raise StartupError(f"cannot listen for HAProxy's agent-check on {self.host}:{self.port}: {exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve(self) -> None:
        if self._server is None:
            await self.open()
        assert self._server is not None
        await self._server.serve_forever()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # HAProxy may send an `agent-send` string first; nothing in it changes the answer, so it is not read.
        try:
            peer = writer.get_extra_info("peername")
            line = agent_reply(self._load(peer[0] if peer else ""))
            writer.write(line.encode("ascii"))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            self.answers += 1
            self.last = line.strip()
            if line.startswith("drain"):
                self._wake_drain_waiters()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)

    async def drain_heard(self, timeout: float) -> bool:
        """Wait until a balancer has been told ``drain`` (its next agent check); False if none asked in time."""
        heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_heard.append(heard)
        try:
            await asyncio.wait_for(heard, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if heard in self._drain_heard:
                self._drain_heard.remove(heard)

    def _wake_drain_waiters(self) -> None:
        for waiter in self._drain_heard:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_heard.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "address": f"{self.host}:{self.port}",
            "answers": self.answers,
            "last": self.last,
            "now": agent_reply(self._load(self.host)).strip(),  # as asked from the agent's own address
        }

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

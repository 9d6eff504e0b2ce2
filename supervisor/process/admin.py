"""The admin endpoint (supervisor process, ``--admin``): ``/metrics``, ``/health``, ``/status``, and the live
dashboard at ``/`` with its event stream at ``/events``.

Served by the supervisor, never by the workers, so it answers while they are saturated or being replaced. It binds
loopback unless told otherwise, and then requires a token (``supervisor.admin_address``), compared in constant time.
Browsers cannot set headers on an EventSource, so the token is also accepted as ``?token=``; the page passes on the
one it was opened with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any, Protocol

import orjson

from ipc.errors import ConfigError
from supervisor.admin_address import AdminAddress
from supervisor.process.admin_http import MAX_HEAD_BYTES, BadRequest, HttpRequest, read_request, response, response_head
from supervisor.process.dashboard import DashboardFeed, page
from supervisor.process.health import HealthFacts, health
from supervisor.process.metrics import MetricsFacts, MetricsUnavailable, render


class AdminSource(Protocol):
    """What the admin endpoint serves from (``supervisor.process.operators.Operators``): read-only views."""

    feed: DashboardFeed

    def metrics_facts(self) -> MetricsFacts: ...

    def health_facts(self) -> HealthFacts: ...

    def snapshot(self) -> dict[str, Any]: ...


logger = logging.getLogger("wsup.supervisor")
MAX_CONNECTIONS = 64  # open admin connections (dashboards included); more are closed at once
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class AdminServer:
    def __init__(self, address: AdminAddress, token: str | None, operators: AdminSource) -> None:
        self.address = address
        self._token = token.encode() if token is not None else None
        self._ops = operators
        self._server: asyncio.Server | None = None
        self._open = 0
        self.refused = 0  # connections closed at once: over the limit
        self.bad_requests = 0
        self.unauthorized = 0

    @property
    def url(self) -> str:
        return AdminAddress(self.address.host, self.port).url

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def open(self) -> None:
        """Bind now, so a taken port fails the start with a clear error instead of a task restarting forever."""
        try:
            self._server = await asyncio.start_server(
                self._serve_one, self.address.host, self.address.port, limit=MAX_HEAD_BYTES, start_serving=False
            )
        except OSError as exc:
            raise ConfigError(f"--admin {self.address.host}:{self.address.port}: {exc.strerror}") from None
        logger.info("admin endpoint on %s (metrics, health, status, dashboard)", self.url)

    async def serve(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def close(self) -> None:
        self._ops.feed.close()
        if self._server is not None:
            self._server.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.transport.abort()
            return
        self._open += 1
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader)
        except BadRequest as exc:
            self.bad_requests += 1
            writer.write(response(exc.status, f"{exc}\n".encode(), TEXT))
            return
        if request.method not in ("GET", "HEAD"):
            writer.write(response(405, b"only GET and HEAD\n", TEXT, extra={"Allow": "GET, HEAD"}))
            return
        if not self._authorized(request):
            self.unauthorized += 1
            writer.write(response(401, b"a token is required\n", TEXT, extra={"WWW-Authenticate": "Bearer"}))
            return
        if request.path == "/events" and request.method == "GET":
            await self._stream(reader, writer)
            return
        status, body, content_type = self._route(request)
        writer.write(response(status, body, content_type, head_only=request.method == "HEAD"))
        await writer.drain()

    def _authorized(self, request: HttpRequest) -> bool:
        if self._token is None:
            return True
        given = request.query.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self._token)

    def _route(self, request: HttpRequest) -> tuple[int, bytes, str]:
        path = request.path
        if path == "/metrics":
            try:
                body, content_type = render(self._ops.metrics_facts)
            except MetricsUnavailable as exc:
                return 501, f"{exc}\n".encode(), TEXT
            return 200, body, content_type
        if path == "/health":
            ok, document = health(self._ops.health_facts())
            return (200 if ok else 503), orjson.dumps(document), JSON
        if path == "/status":
            return 200, orjson.dumps(self._ops.snapshot()), JSON
        if path == "/events":  # HEAD
            return 200, b"", "text/event-stream"
        if path in ("/", "/index.html"):
            return 200, page(), "text/html; charset=utf-8"
        return 404, b"not found: try /, /metrics, /health or /status\n", TEXT

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        feed = self._ops.feed
        if feed.full:
            self.refused += 1
            writer.write(response(503, b"too many open dashboards\n", TEXT, extra={"Retry-After": "5"}))
            return
        writer.write(response_head(200, "text/event-stream", None, {"X-Accel-Buffering": "no"}))
        feed.subscribe(writer)
        try:
            # The client sends nothing more: reading returns at its close (or at junk, which also ends it).
            await reader.read(1)
        finally:
            feed.unsubscribe(writer)

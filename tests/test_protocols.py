"""The worker's protocols: close codes are counted within bounds a peer cannot push; a client gone mid-handshake is a
quiet disconnect."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState

from ipc.errors import ProtocolError
from ipc.messages import Report, decode, encode
from supervisor.worker.protocols import listening_address, protocol_classes
from supervisor.worker.websocket_protocol import _SHARED_HEADER_BYTES
from supervisor.worker.worker_connections import MAX_CLOSE_CODES, WorkerConnections
from tests.wsup_harness import Instance, eventually


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


def test_an_accept_after_the_transport_started_closing_is_a_disconnect_not_a_runtime_error() -> None:
    """A client gone mid-handshake (closed by us or by it, its connection_lost not yet run) when the app accepts:
    uvicorn would drop the accept and fail the app's next send with a RuntimeError and a traceback."""

    async def scenario() -> BaseException | None:
        gate = asyncio.Event()
        raised: list[BaseException | None] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            assert (await receive())["type"] == "websocket.connect"
            await gate.wait()
            try:
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.send", "text": "hello"})
                raised.append(None)
            except BaseException as exc:
                raised.append(exc)
                raise

        config = Config(app, ws="websockets-sansio", log_level="critical")
        config.load()
        ours, peer = socket.socketpair()
        transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(
            lambda: protocol_classes(WorkerConnections())[1](config, ServerState(), {}), ours
        )
        peer.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await eventually(lambda: bool(protocol.tasks), "the app started", 10)
        gate.set()  # the app resumes before the loss is delivered: the closing-but-not-lost window
        transport.close()
        await eventually(lambda: bool(raised), "the app finished its sends", 10)
        peer.close()
        return raised[0]

    assert isinstance(asyncio.run(scenario()), ClientDisconnected)


async def _served(protocol_factory: Any, request: bytes, done: Any) -> Any:
    """A protocol from ``protocol_factory`` on one end of a socket pair, after ``request`` was sent and ``done``."""
    ours, peer = socket.socketpair()
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(protocol_factory, ours)
    peer.sendall(request)
    await eventually(lambda: done(transport, protocol), "the request served", 10)
    return protocol, transport, peer


def test_the_protocols_keep_their_attributes_where_cpython_shares_or_slots_them() -> None:
    """CPython 3.11 shares an instance dict's keys with its class's other instances only up to 30 keys; past that,
    every connection has a private dict (1.3 KiB more) and every attribute access in uvicorn's request path is off
    its fast path (+27,000 instructions per request measured). wsup's HTTP protocol must cost no more dict than
    uvicorn's own after a request; its WebSocket protocol keeps every uvicorn attribute in a slot."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()  # idle until the peer goes
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> tuple[int, int, dict[str, Any]]:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        config = Config(app, http="httptools", ws="websockets-sansio", log_level="critical", lifespan="off")
        config.load()
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        answered = lambda transport, protocol: protocol.cycle is not None and protocol.cycle.response_complete  # noqa: E731
        sizes = []
        for cls in (HttpToolsProtocol, protocol_classes(WorkerConnections())[0]):
            factory = functools.partial(cls, config, ServerState(), {})
            protocol, transport, peer = await _served(factory, request, answered)
            sizes.append(sys.getsizeof(vars(protocol)))
            transport.close()
            peer.close()
        upgrade = (  # header names as the HTTP protocol hands an upgrade over: lowercased
            b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        accepted = lambda transport, protocol: bool(getattr(protocol, "handshake_complete", False))  # noqa: E731
        websocket, transport, peer = await _served(
            lambda: protocol_classes(WorkerConnections())[1](config, ServerState(), {}), upgrade, accepted
        )
        left_in_dict = dict(vars(websocket))
        host = next(name for name, _ in websocket.scope["headers"] if name == b"host")
        assert host is _SHARED_HEADER_BYTES[b"host"], "each connection's scope holds its own copy of 'host'"
        transport.close()
        peer.close()
        return sizes[0], sizes[1], left_in_dict

    uvicorn_dict, wsup_dict, websocket_dict = asyncio.run(scenario())
    assert wsup_dict <= uvicorn_dict, f"wsup's HTTP protocol dict: {wsup_dict} bytes, uvicorn's: {uvicorn_dict}"
    assert websocket_dict == {}, f"uvicorn attributes not in _SANSIO_SLOTS: {sorted(websocket_dict)}"


def test_a_starlette_app_reads_the_headers_and_cookies_a_browser_sends(
    start_wsup: Callable[..., Instance],
) -> None:
    """The header names and values a worker shares between connections' scopes (protocols._SHARED_HEADER_BYTES) are
    still found by the app, lowercased as ASGI wants, whatever the spelling the client sent."""
    wsup = start_wsup("tests.apps.headers_app:asgi", "-i", "1")
    wsup.wait_ready(1)
    with socket.create_connection(("127.0.0.1", wsup.port), timeout=30) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: https://app.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
            b"Cookie: theme=dark; session=abc123\r\n\r\n"
        )
        received = b""
        while b"}" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"closed before the greeting: {received!r}"
            received += chunk
    greeting = json.loads(received[received.index(b"{") : received.rindex(b"}") + 1])
    assert greeting["origin"] == "https://app.example"
    assert greeting["user_agent"] == "Mozilla/5.0 (X11; Linux x86_64)"
    assert greeting["session"] == "abc123"
    assert all(name == name.lower() for name in greeting["names"]), greeting["names"]


def test_the_http_protocol_sets_up_a_connection_as_uvicorn_does() -> None:
    """WsupHttpProtocol.connection_made is uvicorn's own, inline, taking the listener's address instead of a
    getsockname() per connection: on real TCP connections it leaves the same attributes with the same addresses."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # never called: no request is sent
        raise AssertionError(scope)

    async def scenario() -> list[tuple[set[str], Any, Any, Any]]:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        config = Config(app, http="httptools", log_level="critical", lifespan="off")
        config.load()
        loop = asyncio.get_running_loop()
        seen = []
        with socket.create_server(("127.0.0.1", 0)) as listener:
            connections = WorkerConnections()
            connections.local_address = listening_address([listener])
            assert connections.local_address == listener.getsockname()
            for cls in (HttpToolsProtocol, protocol_classes(connections)[0]):
                with socket.create_connection(listener.getsockname()) as client:
                    accepted, _ = listener.accept()
                    factory = functools.partial(cls, config, ServerState(), {})
                    transport, protocol = await loop.connect_accepted_socket(factory, accepted)
                    assert protocol.client == client.getsockname()
                    seen.append((set(vars(protocol)), protocol.server, protocol.client, protocol.scheme))
                    transport.close()
        return seen

    (uvicorn_names, uvicorn_server, uvicorn_client, uvicorn_scheme), ours = asyncio.run(scenario())
    # Two connections, two client ports: the same client host.
    assert ours[0] == uvicorn_names and ours[1] == uvicorn_server and ours[3] == uvicorn_scheme
    assert ours[2][0] == uvicorn_client[0]


def test_the_listening_address_is_used_only_when_every_connection_has_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as specific, socket.create_server(("0.0.0.0", 0)) as wildcard:
        assert listening_address([specific]) == specific.getsockname()
        assert listening_address([wildcard]) is None  # a connection's own address is the one its client dialled
        assert listening_address([specific, wildcard]) is None
        with socket.create_server(("127.0.0.1", 0)) as other_port:
            assert listening_address([specific, other_port]) is None
    if socket.has_ipv6:
        try:
            ipv6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        except OSError:
            return  # no IPv6 loopback on this host
        with ipv6:
            assert listening_address([ipv6]) == ipv6.getsockname()[:2]

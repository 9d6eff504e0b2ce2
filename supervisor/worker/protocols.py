"""The protocol classes of a worker's server: uvicorn's HTTP and WebSocket protocols with wsup's counts, limits and
drain (supervisor.worker.http_protocol, supervisor.worker.websocket_protocol; runs in each worker).

uvicorn keeps every live protocol object in ``server_state.connections``; an upgrade swaps the HTTP protocol for a
WebSocket one. Counting in their own ``connection_made``/``connection_lost`` gives exact counts without walking the
set, so the request path pays one integer increment. The counts live in one ``WorkerConnections`` per server, set
once on the protocol classes made for that server (``protocol_classes``), which uvicorn instantiates per connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import cast

from supervisor.worker.http_protocol import WsupHttpProtocol
from supervisor.worker.websocket_protocol import WsupWebSocketProtocol
from supervisor.worker.worker_connections import WorkerConnections

_INET = (socket.AF_INET, socket.AF_INET6)


def listening_address(listeners: Sequence[socket.socket]) -> tuple[str, int] | None:
    """The address every connection accepted from ``listeners`` has as its own, when they are bound to one.

    A socket bound to a specific IP and port gives each accepted connection that address; one bound to 0.0.0.0 or
    :: does not (a connection's address is the one its client dialled), nor does a Unix socket.
    """
    if any(listener.family not in _INET for listener in listeners):
        return None
    found = {listener.getsockname()[:2] for listener in listeners}
    if len(found) != 1:
        return None
    host, port = found.pop()
    return None if ipaddress.ip_address(host).is_unspecified else (str(host), int(port))


def protocol_classes(connections: WorkerConnections) -> tuple[type[WsupHttpProtocol], type[WsupWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes of one server, carrying its counts as a class attribute.

    uvicorn builds a protocol object per connection from the class it is given. Looking the counts up in uvicorn's
    server state took an ``__init__`` of our own, a Python call per connection (bench/protocol_cost.py); a class
    per server, made once at startup, gives every instance the counts for one attribute read.
    """
    attributes = {"__slots__": (), "server_connections": connections}
    http = type(WsupHttpProtocol.__name__, (WsupHttpProtocol,), attributes)
    websocket = type(WsupWebSocketProtocol.__name__, (WsupWebSocketProtocol,), attributes)
    return cast("type[WsupHttpProtocol]", http), cast("type[WsupWebSocketProtocol]", websocket)

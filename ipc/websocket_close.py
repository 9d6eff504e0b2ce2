"""Close a uvicorn WebSocket from the server side with a chosen code, telling the app as a client close would.

Shared by a draining worker (1012 on reload, 1001 on stop) and the bus's slow-consumer policy (1013).
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


def close_websocket(protocol: WebSocketsSansIOProtocol, code: int) -> bool:
    """Send a close frame with ``code`` and close the transport; False if the handshake or a close is not there."""
    if not protocol.handshake_complete or protocol.close_sent:
        return False
    protocol.stop_keepalive()
    protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code})
    protocol.conn.send_close(code)
    protocol.transport.write(b"".join(protocol.conn.data_to_send()))
    protocol.close_sent = True
    protocol.transport.close()
    return True

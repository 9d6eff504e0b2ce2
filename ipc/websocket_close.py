"""Close a uvicorn WebSocket from the server side with a chosen code, telling the app as a client close would.

Shared by a draining worker (1012 on reload, 1001 on stop) and the bus's slow-consumer policy (1013).
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State


def close_websocket(protocol: WebSocketsSansIOProtocol, code: int) -> bool:
    """Send a close frame with ``code`` and close the transport. False only while the handshake is not complete;
    a connection already closing (either side sent a close frame) is left to finish its own closing handshake."""
    if not protocol.handshake_complete:
        return False
    if protocol.close_sent or protocol.conn.state is not State.OPEN:
        return True
    protocol.stop_keepalive()
    protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code})
    protocol.conn.send_close(code)
    protocol.transport.write(b"".join(protocol.conn.data_to_send()))
    protocol.close_sent = True
    protocol.transport.close()
    return True

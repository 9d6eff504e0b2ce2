"""A Starlette app that greets each WebSocket with what it read of the handshake's headers and cookies."""

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket


async def echo_headers(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(
        {
            "origin": websocket.headers.get("origin"),
            "user_agent": websocket.headers.get("user-agent"),
            "session": websocket.cookies.get("session"),
            "names": [name.decode("latin-1") for name, _ in websocket.scope["headers"]],
        }
    )
    await websocket.close()


asgi = Starlette(routes=[WebSocketRoute("/ws", echo_headers)])

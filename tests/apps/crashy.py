"""A misbehaving app for supervision tests.

While the file named by $CRASHY_MARKER exists, each worker exits abruptly shortly after startup (a crash loop).
``GET /block?s=N`` blocks the worker's event loop for N seconds (a stuck worker: no heartbeats).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    marker = os.environ.get("CRASHY_MARKER", "")
    if marker and os.path.exists(marker):
        asyncio.get_running_loop().call_later(0.2, os._exit, 17)
    yield


async def block(request: Request) -> PlainTextResponse:
    time.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("unblocked")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


asgi = Starlette(lifespan=lifespan, routes=[Route("/block", block), Route("/health", health)])

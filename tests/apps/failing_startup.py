"""An app whose lifespan startup fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    raise ConnectionRefusedError("cannot reach the cache at 127.0.0.1:1")
    yield


asgi = Starlette(lifespan=lifespan)

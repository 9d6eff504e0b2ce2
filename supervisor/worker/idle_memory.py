"""Small stand-ins for the asyncio primitives every uvicorn WebSocket holds, so an idle connection costs less (runs in
each worker).

uvicorn's WebSocket protocol keeps an ``asyncio.Queue`` for the app's ``receive()`` and an ``asyncio.Event`` for
write flow control. Each allocates ``collections.deque`` objects up front (an empty deque is 624 bytes: it reserves
a block of 64 slots): the queue four, the event one, ~3.7 KiB per connection before a single message, on a worker
that holds tens of thousands of idle WebSockets. These classes keep what uvicorn and wsup's drain and bus use of
that API (``put_nowait``/``get``/``empty``/``qsize``; ``set``/``clear``/``is_set``/``wait``), with a list that stays
short (uvicorn pauses reading after each message until the app has taken it) and waiters allocated only while
someone waits.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


def _wake_first(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
            return


class ReceiveQueue(Generic[T]):
    """An unbounded FIFO with ``asyncio.Queue``'s ``put_nowait``/``get``/``empty``/``qsize``. One item wakes one
    waiting ``get``, as with ``asyncio.Queue``; a cancelled ``get`` passes its wake-up on."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        if self._waiters:
            _wake_first(self._waiters)

    async def get(self) -> T:
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if self._items and self._waiters and waiter.done() and not waiter.cancelled():
                    _wake_first(self._waiters)  # this one was woken for an item it will not take
                raise
            finally:
                self._forget(waiter)
        return self._items.pop(0)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if waiters is not None:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class WritableFlag:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, with no waiter list until a writer waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

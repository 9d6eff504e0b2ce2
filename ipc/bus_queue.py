"""The bounded per-subscriber backlog of the broadcast bus and its overflow policy: pure data, no I/O.

A subscriber (a WebSocket client, an in-process iterator) that cannot keep up gets a backlog of at most ``limit``
messages. When it is full, ``drop-oldest`` discards the oldest queued message to make room, and ``disconnect``
refuses the message so the caller can cut the subscriber off. Either way memory stays bounded and nobody else waits.
"""

from __future__ import annotations

import collections
import enum
from typing import Final, Generic, TypeVar

from ipc.errors import ConfigError

T = TypeVar("T")

# RFC 6455 / IANA: "Try Again Later": the server cuts a client off for a temporary condition (here: it fell behind).
CLOSE_TRY_AGAIN_LATER: Final = 1013
MAX_BACKLOG: Final = 1_000_000


class Policy(enum.Enum):
    DROP_OLDEST = "drop-oldest"
    DISCONNECT = "disconnect"

    @classmethod
    def parse(cls, value: str) -> Policy:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ConfigError(f"--bus-policy must be one of {choices}, got {value!r}") from None


class Outcome(enum.Enum):
    QUEUED = "queued"  # there was room
    DROPPED_OLDEST = "dropped-oldest"  # queued, after discarding the oldest message (count one drop)
    OVERFLOW = "overflow"  # not queued: the policy says disconnect


def validate_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_BACKLOG:
        raise ConfigError(f"--bus-queue must be between 1 and {MAX_BACKLOG} messages, got {limit}")
    return limit


class Backlog(collections.deque[T], Generic[T]):
    """A FIFO of at most ``limit`` items. A deque, so ``if backlog:`` and ``popleft()`` cost what they cost there."""

    __slots__ = ("limit", "policy")

    def __init__(self, limit: int, policy: Policy) -> None:
        super().__init__()
        self.limit = validate_limit(limit)
        self.policy = policy

    def push(self, item: T) -> Outcome:
        if len(self) < self.limit:
            self.append(item)
            return Outcome.QUEUED
        if self.policy is Policy.DISCONNECT:
            return Outcome.OVERFLOW
        self.popleft()
        self.append(item)
        return Outcome.DROPPED_OLDEST

"""The bus bridge's Redis session (supervised task ``bridge-redis``): connect, subscribe to the channels with local
members, relay both ways, and on any failure start over with backoff.

One connection publishes (pipelined batches, in queue order: the order of each publisher on each channel is kept
from host to host), one subscribes (redis-py's PubSub). A session is all or nothing: if either breaks, both are
dropped, what was waiting for Redis is counted as not relayed, and the next session subscribes afresh.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ipc.bridge_wire import unpack
from ipc.errors import ProtocolError
from supervisor.process.bridge import Bridge

logger = logging.getLogger("wsup.bridge")

FIRST_RETRY_S: Final = 0.1
# Capped low: cross-host delivery should resume within about a second of Redis being back.
MAX_RETRY_S: Final = 1.0
CONNECT_TIMEOUT_S: Final = 2.0
# A Redis that stops answering without closing the connection (a frozen process, a partition) is found by a PING on
# the subscriber connection every PING_S: silent for SILENT_S, the session ends and the bridge reconnects.
PING_S: Final = 2.0
SILENT_S: Final = 6.0
COMMAND_TIMEOUT_S: Final = 5.0  # a publish batch not acknowledged in this time ends the session the same way
PUBLISH_BATCH: Final = 512
# A channel no user can name (user channels cannot start with \x01): keeps the PubSub subscribed while this host
# has no channel of its own, so its reader always has a connection to read.
PRESENCE_CHANNEL: Final = b"\x01bridge"


class RedisLink:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._malformed_logged = 0
        self._heard_at = 0.0  # loop time of the last thing read on the subscriber connection

    async def run(self) -> None:
        """Sessions, forever; a failed one is counted and retried after a growing pause."""
        bridge = self.bridge
        delay = FIRST_RETRY_S
        connected_before = False
        while True:
            client = aioredis.Redis(
                **bridge.address.connection_kwargs(),  # type: ignore[arg-type]
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=COMMAND_TIMEOUT_S,
                socket_keepalive=True,
                # No retries inside the client: a re-sent pipeline could publish a message twice.
                retry=Retry(NoBackoff(), 0),
                client_name="wsup-bridge",
            )
            try:
                await client.ping()
                if connected_before:
                    bridge.counters.reconnects += 1
                connected_before = True
                delay = FIRST_RETRY_S
                await self._session(client)
            except (RedisError, OSError, ProtocolError) as exc:
                if bridge.state != "connected":
                    bridge.counters.connect_failures += 1
                bridge.set_state("disconnected", exc)
            finally:
                if bridge.state == "connected":  # cancelled: the instance stops
                    bridge.set_state("disconnected")
                bridge.lose_outbox()
                await _close_quietly(client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def _session(self, client: aioredis.Redis) -> None:
        bridge = self.bridge
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(bridge.prefix_bytes + PRESENCE_CHANNEL)
            bridge.subscribed.clear()
            bridge.set_state("connected")
            self._heard_at = asyncio.get_running_loop().time()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._listen(pubsub))
                group.create_task(self._watch(pubsub))
                group.create_task(self._follow_interest(pubsub))
                group.create_task(self._publish(client))
        except* (RedisError, OSError, ProtocolError) as errors:
            raise errors.exceptions[0] from None
        finally:
            await _close_quietly(pubsub)

    async def _follow_interest(self, pubsub: Any) -> None:
        """Keep this host's Redis subscriptions equal to the channels with local members."""
        bridge = self.bridge
        while True:
            bridge.wanted_changed.clear()
            added = bridge.wanted - bridge.subscribed
            removed = bridge.subscribed - bridge.wanted
            if added:
                await pubsub.subscribe(*(bridge.prefix_bytes + channel for channel in added))
                bridge.subscribed |= added
            if removed:
                await pubsub.unsubscribe(*(bridge.prefix_bytes + channel for channel in removed))
                bridge.subscribed -= removed
            if not bridge.wanted_changed.is_set():
                await bridge.wanted_changed.wait()

    async def _watch(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_S)
            silent = loop.time() - self._heard_at
            if silent > SILENT_S:
                raise RedisConnectionError(f"Redis did not answer for {silent:.1f}s")
            await pubsub.ping()

    async def _listen(self, pubsub: Any) -> None:
        bridge = self.bridge
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._heard_at = loop.time()
            if message is None or message.get("type") != "message":
                continue
            channel = bridge.check_channel(message["channel"])
            if channel is None:
                continue  # our presence channel, or a channel outside our prefix
            try:
                envelope = unpack(message["data"], bridge.max_bytes)
            except ProtocolError as exc:
                bridge.counters.malformed_in += 1
                if self._malformed_logged < 10:
                    self._malformed_logged += 1
                    logger.warning("bridge: dropped a malformed message on %r: %s", channel, exc)
                continue
            bridge.deliver(channel, envelope)

    async def _publish(self, client: aioredis.Redis) -> None:
        bridge = self.bridge
        outbox = bridge.outbox
        while True:
            if not outbox:
                bridge.outbox_ready.clear()
                await bridge.outbox_ready.wait()
                continue
            batch = [outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(outbox)))]
            pipe = client.pipeline(transaction=False)
            for channel, envelope in batch:
                pipe.publish(channel, envelope)
            try:
                await pipe.execute()
            except BaseException:
                bridge.counters.dropped["failed"] += len(batch)
                raise
            bridge.counters.messages_out += len(batch)


async def _close_quietly(closable: Any) -> None:
    try:
        await closable.aclose()
    except (RedisError, OSError):
        pass

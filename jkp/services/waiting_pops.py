"""Pops that wait for a kernel, first come first served across replicas, and their wake-up.

A pop or warm create that finds its pool empty joins the pool's line in Redis (see
docs/redis.md):

- ``<key>:waiting``        sorted set, waiter id -> Redis time it first waited (its place)
- ``<key>:waiting-until``  hash, waiter id -> JSON {until: its deadline (Redis time), spec}

The claim script (PoolStore.claim) grants a kernel to a waiter only while fewer live waiters
of its spec are ahead of it than there are idle kernels of that spec, and to a new arrival
only when there are more idle kernels than waiters: a kernel pooled while pops wait goes to
the oldest, whichever replica pooled it and whichever replica the pop came to. A waiter's
entry lasts until its pop's deadline, so one whose replica died blocks nobody longer than
that; a pop that ends without a kernel leaves the line at once.

Every script that puts a kernel in the idle list publishes on ``<key>:pooled``; each replica
listens there and wakes its waiting pops, so a kernel another replica pooled is claimed within
a Redis round trip, not a poll later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError
from traitlets.config import LoggingConfigurable

# Seconds a read of the channel waits before checking for stop().
_LISTEN_TIMEOUT = 1.0
# Seconds between attempts to listen again once Redis failed.
_RETRY_INTERVAL = 0.5


class PooledNotices(LoggingConfigurable):
    """Listens on a pool's Redis channel for kernels pooled (or put back, or a waiter gone)
    by any replica, and calls ``wake`` for each: this replica's waiting pops then claim
    again. A notice lost (Redis down, the subscription reconnecting) costs a waiting pop one
    poll interval, not its kernel."""

    def __init__(self, client: redis.Redis, channel: str, wake: Callable[[], None], **kwargs):
        super().__init__(**kwargs)
        self.channel = channel
        self._wake = wake
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        """Subscribe and listen, in a task of its own: the replica's start does not wait for
        Redis (a waiting pop's poll covers the moments before the subscription)."""
        self._task = asyncio.create_task(self._listen(), name="jkp-pooled-notices")

    def tasks(self) -> list[asyncio.Task]:
        """The listening loop, for the pool's stop() to cancel if it hangs."""
        return [] if self._task is None else [self._task]

    def stop(self) -> None:
        """Listen no more; the loop ends at its next read."""
        self._stopping = True

    async def close(self) -> None:
        """Close the subscription's connection (after stop() and the loop's end)."""
        await self._pubsub.aclose()

    async def _listen(self) -> None:
        failing = False
        while not self._stopping:
            try:
                if not self._pubsub.subscribed:
                    await self._pubsub.subscribe(self.channel)
                message = await self._pubsub.get_message(timeout=_LISTEN_TIMEOUT)
            except (RedisError, OSError) as e:
                if not failing:
                    self.log.warning("Notices of pooled kernels from Redis failed: %s", e)
                failing = True
                await asyncio.sleep(_RETRY_INTERVAL)
                continue
            if failing:
                self.log.info("Notices of pooled kernels from Redis resumed")
                failing = False
            if message is not None and message.get("type") == "message":
                self._wake()

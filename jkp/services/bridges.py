"""The kernel websockets jkp bridges, by (kernel, session): a newer one replaces the older.

EG (jupyter_server 1.24) keeps one websocket per ``<kernel>:<session_id>``: a second one waits
until the first has closed. When both reach EG in the same loop turn, the first is still in
its handshake, EG's close of it does nothing, and the second waits until something else closes
the first. Jupyter Server in gateway mode leaves such a first connection open when Chromium
rejects Lab's websocket, and Lab retries at once with the same session: its notebook then has
no kernel for as long as the leftover lives. So jkp does EG's replacement itself, before EG
sees the second: it closes its own bridge of the older connection, on whichever replica.

jkp keeps passing the client's ``session_id`` to EG (rather than one of its own per
connection): EG buffers a kernel's messages while a session is away and replays them when the
same session connects again, which Lab relies on after a network blip (an execute_reply sent
meanwhile would otherwise be lost and its cell never finish).

Across replicas, each new bridge is announced on a Redis channel. Redis delivers the
announcements in one order to every replica, so they agree on which bridge is the newest: a
bridge gives way to an announcement that comes after its own. An announcement lost (Redis down,
a replica's subscription reconnecting) leaves EG's own behaviour: the newer connection waits.

A subscription can also go deaf without an error: to a master that hangs and that a Sentinel
failover replaces, the publishes then go elsewhere and nothing comes back. So each replica
publishes an echo to itself every second, and subscribes anew (asking the sentinels again)
when it has heard nothing for a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError
from traitlets.config import LoggingConfigurable

# Seconds a read of the channel waits for an announcement before checking for stop().
_LISTEN_TIMEOUT = 1.0
# Seconds between attempts to read the channel again once Redis failed.
_RETRY_INTERVAL = 0.5
# Seconds between a replica's echoes to itself, and of silence after which it subscribes anew.
_ECHO_INTERVAL = 1.0
_SILENCE_LIMIT = 3.0
# Seconds a newer connection of a session waits for the older one's handshake with EG to settle.
_SETTLE_TIMEOUT = 5.0


class Bridge:
    """One bridged websocket of a session: ``replace`` is called once when a newer connection
    of the same kernel and session arrives."""

    def __init__(self, key: str, replace: Callable[[], None]):
        self.key = key
        self.id = uuid.uuid4().hex
        self._replace = replace
        self.announced = False  # its own announcement came back from Redis
        self.replaced = False
        # Set once its connection to EG is settled: open, failed, or (replaced) closed again.
        self.settled = asyncio.Event()

    def replace(self) -> None:
        """Have the bridge give way (once)."""
        if not self.replaced:
            self.replaced = True
            self._replace()


class SessionBridges(LoggingConfigurable):
    """The bridges of this replica by (EG kernel id, session id), and their announcements to
    and from the other replicas on Redis channel ``channel``."""

    def __init__(self, client: redis.Redis, channel: str, **kwargs):
        super().__init__(**kwargs)
        self.client = client
        self.channel = channel
        self._echo_channel = f"{channel}:echo:{uuid.uuid4().hex}"  # heard by this one only
        self._bridges: dict[str, Bridge] = {}  # the newest of each session, on this replica
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        """Listen to the other replicas' announcements (subscribed before this returns, when
        Redis answers)."""
        try:
            await self._pubsub.subscribe(self.channel, self._echo_channel)
        except RedisError:
            pass  # the listening loop tries again at once, and reports it
        self._task = asyncio.create_task(self._listen(), name="jkp-bridges")

    async def stop(self) -> None:
        """Stop listening; the bridges themselves close with their connections."""
        self._stopping = True
        if self._task is not None:
            try:
                # Ends at its next read; cancelled only if Redis hangs it longer.
                await asyncio.wait_for(self._task, _LISTEN_TIMEOUT + 2)
            except TimeoutError:
                pass
        await self._pubsub.aclose()

    async def open(self, kernel_id: str, session_id: str, replace: Callable[[], None]) -> Bridge:
        """Register a bridge of ``session_id`` to EG kernel ``kernel_id``: this replica's older
        ones of the same session are replaced now, other replicas' once they hear of it."""
        key = f"{kernel_id}:{session_id}"
        bridge = Bridge(key, replace)
        older = self._bridges.get(key)
        self._bridges[key] = bridge
        if older is not None:
            self.log.info("Replacing the websocket of session %s by a newer one", key)
            older.replace()
            # The older one may still be in its handshake with EG, where EG's own replacement
            # cannot close it (the newer connection would wait on EG until something did):
            # connect the newer one only once the older is open and closed again, or failed.
            try:
                await asyncio.wait_for(older.settled.wait(), _SETTLE_TIMEOUT)
            except TimeoutError:
                pass  # EG's own behaviour: the newer connection waits on EG
        try:
            await self.client.publish(self.channel, json.dumps({"key": key, "bridge": bridge.id}))
        except RedisError as e:
            self.log.warning("Could not announce the websocket of session %s: %s", key, e)
        return bridge

    def close(self, bridge: Bridge) -> None:
        """Forget a bridge whose connection ended."""
        if self._bridges.get(bridge.key) is bridge:
            del self._bridges[bridge.key]

    def _heard(self, key: str, bridge_id: str) -> None:
        bridge = self._bridges.get(key)
        if bridge is None:
            return
        if bridge.id == bridge_id:
            bridge.announced = True
        elif bridge.announced:
            # A newer bridge of this session, on another replica; one announced before this
            # one's own is older and changes nothing.
            self.log.info("Replacing the websocket of session %s by a newer one", key)
            self.close(bridge)
            bridge.replace()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        heard = echoed = loop.time()  # when the subscription last proved alive; the last echo
        while not self._stopping:
            try:
                if loop.time() - heard > _SILENCE_LIMIT:
                    heard = loop.time()
                    await self._subscribe_anew()
                if not self._pubsub.subscribed:
                    await self._pubsub.subscribe(self.channel, self._echo_channel)
                if loop.time() - echoed >= _ECHO_INTERVAL:
                    echoed = loop.time()
                    await self.client.publish(self._echo_channel, "")
                message = await self._pubsub.get_message(timeout=_LISTEN_TIMEOUT)
            except (RedisError, OSError) as e:
                if not failing:
                    self.log.warning("Websocket announcements from Redis failed: %s", e)
                failing = True
                heard = loop.time()  # a failure is no silence: the subscription is made again
                await asyncio.sleep(_RETRY_INTERVAL)
                continue
            if failing:
                self.log.info("Websocket announcements from Redis resumed")
                failing = False
            if message is None or message.get("type") != "message":
                continue
            heard = loop.time()
            if _text(message["channel"]) == self._echo_channel:
                continue
            try:
                announced = json.loads(message["data"])
                self._heard(str(announced["key"]), str(announced["bridge"]))
            except (ValueError, KeyError, TypeError) as e:
                self.log.warning("Unreadable websocket announcement %r: %s", message["data"], e)

    async def _subscribe_anew(self) -> None:
        """Drop the subscription's connection, on which nothing came back, for a new one."""
        self.log.warning("Websocket announcements from Redis went silent; subscribing anew")
        old, self._pubsub = self._pubsub, self.client.pubsub(ignore_subscribe_messages=True)
        await old.aclose()
        # Idle connections may reach the same deaf server: the new subscription makes its own
        # (with sentinels, to the master they name now).
        await self.client.connection_pool.disconnect(inuse_connections=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

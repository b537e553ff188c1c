"""PoolStarts: one pool's kernels being started (leases, take-overs, starts given up on that
may still appear on EG) and the heartbeats of the replicas that start them."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis

from jkp.services.store.pool_keys import PoolKeys
from jkp.services.store.redis_connection import as_text
from jkp.services.store.scripts import script

# Start latencies a pool keeps: its start latency is their median.
START_LATENCIES_KEPT = 10


class PoolStarts:
    """Atomic operations on one pool's starts and on its replicas' heartbeats and turns."""

    def __init__(self, client: redis.Redis, keys: PoolKeys):
        self.client = client
        self.keys = keys
        self._reserve = client.register_script(script("pool/reserve"))
        self._finish_start = client.register_script(script("pool/finish_start"))
        self._retire = client.register_script(script("pool/retire"))
        self._beat = client.register_script(script("pool/beat"))
        self._live_specs = client.register_script(script("pool/live_specs"))
        self._orphans = client.register_script(script("pool/orphans"))
        self._take_over_start = client.register_script(script("pool/take_over_start"))
        self._defer_start = client.register_script(script("pool/defer_start"))
        self._adopt_late = client.register_script(script("pool/adopt_late"))
        self._forget_late = client.register_script(script("pool/forget_late"))
        self._expired_starting = client.register_script(script("pool/expired_starting"))

    async def reserve_start(
        self, kernel_id: str, target: int, lease_seconds: float, replica: str = "", spec: str = ""
    ) -> bool:
        """Record a kernel about to be started by ``replica``, if idle plus starting kernels are
        below target.

        The record is a lease: it expires after ``lease_seconds`` so a replica that dies
        mid-start does not hold a place in the pool forever; sooner, once its heartbeat runs
        out, another replica takes the start over (take_over_start).
        """
        k = self.keys
        keys = [k.idle, k.starting, k.start_owners, k.start_specs, *([k.pools] if k.pools else [])]
        args = [target, kernel_id, lease_seconds, replica, spec, k.unhanded()]
        return bool(await self._reserve(keys=keys, args=args))

    async def finish_start(
        self,
        kernel_id: str,
        model: dict[str, Any],
        replica: str = "",
        latency: float | None = None,
    ) -> int:
        """Move a started kernel from its lease into the idle list; with ``latency`` (the
        seconds its start took), keep that among the pool's last START_LATENCIES_KEPT.

        1 when pooled; 0 when its lease was no longer there (expired and retired): the caller
        must then shut the kernel down rather than pool it; -1 when another replica took the
        start over: the kernel is that replica's to pool.
        """
        k = self.keys
        seconds = "" if latency is None else f"{latency:.3f}"
        return int(
            await self._finish_start(
                keys=[k.idle, k.starting, k.start_owners, k.start_specs, k.start_latencies],
                args=[
                    kernel_id,
                    json.dumps(model),
                    replica,
                    seconds,
                    START_LATENCIES_KEPT,
                    k.pooled,
                ],
            )
        )

    async def retire_starting(self, kernel_id: str) -> bool:
        """Move a kernel whose start failed or whose lease expired to the retiring set."""
        k = self.keys
        return bool(
            await self._retire(
                keys=[k.starting, k.retiring, k.start_owners, k.start_specs],
                args=["zset", kernel_id],
            )
        )

    async def beat(self, replica: str, ttl_seconds: float, spec: str = "") -> None:
        """Refresh ``replica``'s heartbeat: it counts as alive, running ``spec``, for
        ``ttl_seconds``."""
        k = self.keys
        keys = [k.replicas, k.replica_specs, *([k.pools, k.idle] if k.pools else [])]
        await self._beat(keys=keys, args=[replica, ttl_seconds, spec, k.unhanded()])

    async def leave(self, replica: str) -> None:
        """Withdraw ``replica``'s heartbeat at once (a clean stop)."""
        await self.client.zrem(self.keys.replicas, replica)
        await self.client.hdel(self.keys.replica_specs, replica)

    async def live_specs(self) -> set[str]:
        """The spec fingerprints that live replicas run."""
        k = self.keys
        return {as_text(s) for s in await self._live_specs(keys=[k.replicas, k.replica_specs])}

    async def live_replicas(self) -> list[str]:
        """The replicas whose heartbeat has not run out."""
        seconds, microseconds = await self.client.time()
        now = seconds + microseconds / 1e6
        live = await self.client.zrangebyscore(self.keys.replicas, f"({now}", "+inf")
        return sorted(as_text(r) for r in live)

    async def orphans(self) -> tuple[list[str], list[str]]:
        """Kernel ids of the starts and of the claims whose replica's heartbeat ran out."""
        k = self.keys
        starts, claims = await self._orphans(
            keys=[k.starting, k.start_owners, k.claimed, k.replicas]
        )
        return [as_text(i) for i in starts], [as_text(i) for i in claims]

    async def start_spec(self, kernel_id: str) -> str | None:
        """The spec fingerprint a kernel being started was started as, if recorded."""
        spec = await self.client.hget(self.keys.start_specs, kernel_id)
        return None if spec is None else as_text(spec)

    async def take_over_start(self, kernel_id: str, replica: str, lease_seconds: float) -> bool:
        """Make ``replica`` the starter of a kernel whose starter's heartbeat ran out; True for
        exactly one replica, however many try."""
        k = self.keys
        return bool(
            await self._take_over_start(
                keys=[k.starting, k.start_owners, k.replicas],
                args=[kernel_id, replica, lease_seconds],
            )
        )

    async def defer_start(self, kernel_id: str, replica: str, seconds: float) -> bool:
        """Move ``replica``'s start of a kernel EG does not have out of the pool's count (a
        replacement may start at once) into the late set for ``seconds``: its start request may
        still reach EG. False when ``replica`` does not own the start (any more)."""
        k = self.keys
        return bool(
            await self._defer_start(
                keys=[k.starting, k.start_owners, k.late], args=[kernel_id, replica, seconds]
            )
        )

    async def late_ids(self) -> list[str]:
        """Kernels of starts given up on that may still appear on EG."""
        return [as_text(i) for i in await self.client.zrange(self.keys.late, 0, -1)]

    async def adopt_late(
        self, kernel_id: str, target: int, lease_seconds: float, replica: str, spec: str = ""
    ) -> int:
        """Take a late kernel that EG now has: 1 when it is ``replica``'s start again (the pool
        of ``spec`` had room below ``target``), -1 when it went to the retiring set instead, 0
        when it was not late (any more)."""
        k = self.keys
        return int(
            await self._adopt_late(
                keys=[k.idle, k.starting, k.start_owners, k.start_specs, k.late, k.retiring],
                args=[kernel_id, target, lease_seconds, replica, spec],
            )
        )

    async def forget_late(self, kernel_id: str) -> bool:
        """Forget a late kernel once its time to appear on EG has run out."""
        k = self.keys
        return bool(await self._forget_late(keys=[k.late, k.start_specs], args=[kernel_id]))

    async def expired_starting_ids(self) -> list[str]:
        """Kernels whose start lease expired: their starter died or gave up."""
        return [as_text(i) for i in await self._expired_starting(keys=[self.keys.starting])]

    async def take_turn(self, key: str, owner: str, seconds: float) -> bool:
        """True for one replica per ``seconds`` at ``key``: the one whose turn it is now."""
        return bool(await self.client.set(key, owner, nx=True, px=int(seconds * 1000)))

    async def take_activation_turn(self, owner: str, seconds: float) -> bool:
        """True for one replica per ``seconds``: the one that sweeps the idle kernels now."""
        return await self.take_turn(self.keys.activation, owner, seconds)

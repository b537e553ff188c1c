"""PoolStore: the atomic operations on one pool's keys (pool_keys.py), each one Lua script
(lua/pool/), so a kernel is always in exactly one place."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis

from jkp.services.store.claims import (
    AliasTaken,
    Claim,
    DemandData,
    Idempotency,
    IdempotencyConflict,
    IdempotencyPending,
    Replay,
)
from jkp.services.store.pool_keys import PoolKeys
from jkp.services.store.pool_starts import PoolStarts
from jkp.services.store.redis_connection import as_text
from jkp.services.store.scripts import script
from jkp.services.store.user_kernels import UserKernelStore, UserLimitReached


class PoolStore(PoolStarts):
    """Atomic operations on one pool's keys: its starts (PoolStarts), claims and hand-outs,
    idle, handed-out and retiring kernels, and its demand."""

    def __init__(self, client: redis.Redis, keys: PoolKeys):
        super().__init__(client, keys)
        self._claim = client.register_script(script("pool/claim"))
        self._hand_over = client.register_script(script("pool/hand_over"))
        self._end_claim = client.register_script(script("pool/end_claim"))
        self._trim_surplus = client.register_script(script("pool/trim_surplus"))
        self._trim_oldest = client.register_script(script("pool/trim_oldest"))
        self._demand = client.register_script(script("pool/demand"))
        self._take_over_claim = client.register_script(script("pool/take_over_claim"))
        self._stale_claims = client.register_script(script("pool/stale_claims"))
        self._counts = client.register_script(script("pool/counts"))
        self._forget_handed = client.register_script(script("pool/forget_handed"))
        self._leave_line = client.register_script(script("pool/leave_line"))
        # The users' kernel counts are shared by all pools; the cold kernels' side of them.
        self.user_kernels = UserKernelStore(client, keys.users)

    async def take_over_claim(self, kernel_id: str, replica: str) -> Claim | None:
        """Make ``replica`` the holder of a claim whose pop's replica's heartbeat ran out; the
        claim for exactly one replica, however many try, else None."""
        k = self.keys
        model_json = await self._take_over_claim(
            keys=[k.claimed, k.replicas], args=[kernel_id, replica]
        )
        if model_json is None:
            return None
        return Claim(kernel_id, as_text(model_json), replica=replica)

    async def claim(
        self,
        user_id: str,
        idempotency: Idempotency | None = None,
        lease_seconds: float = 60,
        replica: str = "",
        spec: str = "",
        alias: str = "",
        create_id: str = "",
        user_limit: int = -1,
        arrivals_ttl: int = 0,
        waiter: str = "",
        wait_seconds: float = 0.0,
        bucket_seconds: float = 1.0,
    ) -> Claim | Replay | None:
        """Take the oldest idle kernel for ``user_id``; None when the pool is empty.

        With ``idempotency``, a key an earlier pop of the same request finished with gives a
        Replay of its model instead; IdempotencyConflict when another request used the key, and
        IdempotencyPending while another pop with it runs (at most ``lease_seconds``).

        With ``alias``, a gateway create's client-side kernel id: AliasTaken when it is bound
        or reserved, else it is reserved for ``create_id`` with the claim, for
        ``lease_seconds`` (a create then costs one script, not two).

        With ``user_limit`` (max_kernels_per_user; -1: none), UserLimitReached when
        ``user_id`` holds that many kernels already; else the claimed kernel counts as one of
        them until it is deleted or gone (or the claim ends without a hand-over).

        With ``arrivals_ttl`` (a request's first claim, in a pool sized by demand), the
        request is counted as an arrival, kept that many seconds, in its bucket of
        ``bucket_seconds``.

        With ``waiter`` (the request's id), it claims only when no earlier waiter is owed the
        idle kernels, and otherwise waits in line (None), at most ``wait_seconds`` from now
        unless it claims again; the claim that takes a kernel takes it out of the line.
        """
        k = self.keys
        keys = [k.idle, k.claimed, k.aliases, "", k.users, k.arrivals, k.waiting, k.waiting_until]
        args: list[Any] = [user_id, replica, spec, "", 0, alias, create_id, lease_seconds, ""]
        args += [user_limit, arrivals_ttl, waiter, f"{max(wait_seconds, 0.0):.3f}"]
        args.append(repr(bucket_seconds))
        if idempotency is not None:
            keys[3] = k.idempotency(idempotency.key)
            args[3:5] = [idempotency.owner, int(lease_seconds * 1000)]
            args[8] = idempotency.request
        outcome, model_json = [as_text(v) for v in await self._claim(keys=keys, args=args)]
        if outcome == "claimed":
            return Claim(json.loads(model_json)["id"], model_json, idempotency, replica)
        if outcome == "replay":
            return Replay(model_json)
        if outcome == "conflict":
            raise IdempotencyConflict(
                "the Idempotency-Key was used for another request (userId, kernelName or env)"
            )
        if outcome == "pending":
            raise IdempotencyPending("a pop with this Idempotency-Key is still running")
        if outcome == "taken":
            raise AliasTaken(f"kernel id {alias} is bound or being bound")
        if outcome == "limit":
            raise UserLimitReached(user_limit, user_id, int(model_json))
        return None

    async def hand_over(
        self,
        claim: Claim,
        user_id: str,
        model: dict[str, Any] | None = None,
        ttl_seconds: float = 0,
        alias: str = "",
        binding: dict[str, Any] | None = None,
    ) -> bool:
        """Record the claimed kernel as handed to ``user_id``; it never returns to the pool.

        With an idempotency key, ``model`` is kept ``ttl_seconds`` for pops that repeat it.
        With ``alias``, ``binding`` is stored under it in the aliases hash in the same step.
        """
        k = self.keys
        idempotency_key = k.idempotency(claim.idempotency.key if claim.idempotency else "-")
        keys = [k.claimed, k.handed, k.aliases, idempotency_key]
        args: list[Any] = [claim.kernel_id, user_id, claim.replica, "", 0, alias, "", ""]
        if claim.idempotency is not None:
            args[3] = json.dumps(model or claim.model)
            args[4] = max(int(ttl_seconds * 1000), 1)
            args[7] = claim.idempotency.request
        if alias:
            args[6] = json.dumps(binding or {})
        return bool(await self._hand_over(keys=keys, args=args))

    async def release(self, claim: Claim) -> bool:
        """Put a claimed kernel back at the pop end of the idle list, untouched."""
        return await self._finish_claim(claim, "release", self.keys.idle)

    async def retire_claim(self, claim: Claim) -> bool:
        """Move a claimed kernel that must not be handed out to the retiring set."""
        return await self._finish_claim(claim, "retire", self.keys.retiring)

    async def _finish_claim(self, claim: Claim, how: str, destination: str) -> bool:
        keys = [self.keys.claimed, destination, "", self.keys.users]
        args = [claim.kernel_id, how, claim.model_json, "", claim.replica, self.keys.pooled]
        if claim.idempotency is not None:
            keys[2] = self.keys.idempotency(claim.idempotency.key)
            args[3] = claim.idempotency.owner
        return bool(await self._end_claim(keys=keys, args=args))

    async def leave_line(self, waiter: str) -> None:
        """Take a request that ends without a kernel out of the line of waiting pops."""
        k = self.keys
        await self._leave_line(keys=[k.waiting, k.waiting_until, k.idle], args=[waiter, k.pooled])

    async def waiting(self) -> int:
        """Requests in the line of waiting pops (some may have passed their deadline)."""
        return int(await self.client.zcard(self.keys.waiting))

    async def retire_idle(self, kernel_id: str, model_json: str) -> bool:
        """Move one idle kernel to the retiring set; False when it was no longer idle."""
        k = self.keys
        return bool(
            await self._retire(keys=[k.idle, k.retiring], args=["list", kernel_id, model_json])
        )

    async def trim_surplus(self, target: int, spec: str = "") -> list[str]:
        """Retire the newest idle kernels of ``spec`` above ``target``; returns their ids."""
        k = self.keys
        ids = await self._trim_surplus(
            keys=[k.idle, k.starting, k.retiring, k.start_specs], args=[target, spec]
        )
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def trim_oldest(self, target: int, spec: str = "") -> list[str]:
        """Retire the oldest idle kernels of ``spec`` above ``target``; their stored models."""
        k = self.keys
        models = await self._trim_oldest(
            keys=[k.idle, k.starting, k.retiring, k.start_specs], args=[target, spec]
        )
        return [as_text(m) for m in models]

    async def demand(self, keep_seconds: float, bucket_seconds: float = 1.0) -> DemandData:
        """What the pool's size is computed from (see DemandData), its arrivals counted in
        buckets of ``bucket_seconds``; arrivals older than ``keep_seconds`` are dropped on the
        way."""
        k = self.keys
        seconds, micros, flat, latencies, oldest, held, waiting = await self._demand(
            keys=[k.arrivals, k.start_latencies, k.starting, k.idle, k.waiting_until],
            args=[keep_seconds, repr(bucket_seconds)],
        )
        buckets = {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return DemandData(
            int(seconds) + int(micros) / 1e6,
            buckets,
            [float(v) for v in latencies],
            float(oldest) if oldest not in ("", b"") else None,
            bucket_seconds,
            int(held),
            int(waiting),
        )

    async def forget_retired(self, kernel_id: str) -> None:
        """Drop a kernel from the retiring set once EG has shut it down."""
        await self.client.hdel(self.keys.retiring, kernel_id)

    async def idle_models(self) -> list[str]:
        """The idle list as stored (JSON strings), oldest last."""
        return [as_text(m) for m in await self.client.lrange(self.keys.idle, 0, -1)]

    async def retiring_ids(self) -> list[str]:
        """Kernels waiting to be shut down on EG."""
        return [as_text(i) for i in await self.client.hkeys(self.keys.retiring)]

    async def stale_claims(self, max_age: float) -> list[Claim]:
        """Claims older than ``max_age`` seconds: the replica handing them out died or hung."""
        flat = await self._stale_claims(keys=[self.keys.claimed], args=[max_age])
        return [Claim(as_text(flat[i]), as_text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def retire_handed(self, kernel_id: str) -> bool:
        """Take back a kernel handed out to a caller that left before it got the answer."""
        k = self.keys
        keys = [k.handed, k.retiring, k.aliases, k.users]
        return bool(await self._retire(keys=keys, args=["hash", kernel_id]))

    async def forget_idempotency(self, claim: Claim) -> None:
        """Drop the idempotency record a claim's pop wrote, if it had a key."""
        if claim.idempotency is not None:
            await self.client.delete(self.keys.idempotency(claim.idempotency.key))

    async def handed_out(self) -> dict[str, dict[str, Any]]:
        """Kernel id -> {user_id, handed_at} for every kernel handed out that EG still has."""
        raw = await self.client.hgetall(self.keys.handed)
        return {as_text(k): json.loads(v) for k, v in raw.items()}

    async def handed_page(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page of the handed-out kernel ids (HSCAN): the next cursor (0: done) and ids."""
        cursor, page = await self.client.hscan(self.keys.handed, cursor, count=count)
        return int(cursor), [as_text(k) for k in page]

    async def forget_handed(self, kernel_ids: list[str]) -> None:
        """Drop handed-out kernels that EG no longer has (shut down by their user, or culled),
        and the aliases they were bound to."""
        if kernel_ids:
            k = self.keys
            await self._forget_handed(keys=[k.handed, k.aliases, k.users], args=kernel_ids)

    async def counts(self) -> dict[str, int]:
        """How many kernels are idle, starting (live leases), being handed out, handed out."""
        k = self.keys
        # One script, not a MULTI pipeline: redis-py retries scripts on a connection that died
        # with a restarted Redis, but not transactions.
        idle, starting, claimed, handed = await self._counts(
            keys=[k.idle, k.starting, k.claimed, k.handed]
        )
        return {"idle": idle, "starting": starting, "claimed": claimed, "handed": handed}

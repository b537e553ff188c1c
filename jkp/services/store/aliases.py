"""The gateway's kernel aliases in Redis: the id a client knows a warm kernel by -> its binding.

A warm create binds a pooled kernel late to the client's own kernel id (``KERNEL_ID``), or to
the kernel's own id when the client named none. The aliases hash keeps, per client id, the
binding: ``{kernel_id, pool, working_dir, env}``. Every replica resolves every request through
it, and a restart of the kernel is bound again from it. While a create is under way its
client id holds a reservation ``{reserved_by, expires}`` instead, so two creates with the same
id never both get a kernel. The binding itself is written by the hand-over (PoolStore).

No client may reach a pool's kernel that is not handed out (idle, starting, claimed, retiring),
whichever replica runs the pool: each pool registers the keys of those kernels in the pools
hash (PoolStore), and an id is resolved against all of them in the same script as its alias.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis

from jkp.services.store.scripts import script


class UnhandedKernel(LookupError):
    """The id names a pool's kernel that is not handed out: no client may reach it."""


class AliasStore:
    """Atomic operations on the aliases hash, and the pools' kernels no client may reach."""

    def __init__(self, client: redis.Redis, key: str, pools_key: str):
        self.client = client
        self.key = key
        self.pools_key = pools_key
        self._resolve = client.register_script(script("aliases/resolve"))
        self._unhanded_ids = client.register_script(script("aliases/unhanded_ids"))
        self._drop = client.register_script(script("aliases/drop"))
        self._taken = client.register_script(script("aliases/taken"))
        self._reserve = client.register_script(script("aliases/reserve"))

    async def reserve(self, alias: str, create_id: str, seconds: float) -> bool:
        """Reserve ``alias`` for ``create_id`` for ``seconds``, as a warm create's claim does;
        False when it is bound or reserved by another create."""
        return bool(await self._reserve(keys=[self.key], args=[alias, create_id, seconds]))

    async def drop_reservation(self, alias: str, create_id: str) -> None:
        """Give back a reservation that did not end in a binding."""
        await self._drop(keys=[self.key], args=[alias, create_id, ""])

    async def taken(self, alias: str) -> bool:
        """Whether ``alias`` is bound, or reserved by a create still under way."""
        return bool(await self._taken(keys=[self.key], args=[alias]))

    async def binding(self, alias: str) -> dict[str, Any] | None:
        """The binding of ``alias``; None when it is not bound (unknown, or still reserved).
        UnhandedKernel when it is a pool's kernel that is not handed out."""
        outcome, raw = await self._resolve(keys=[self.key, self.pools_key], args=[alias])
        if outcome in (b"unhanded", "unhanded"):
            raise UnhandedKernel(alias)
        return json.loads(raw) if raw else None

    async def unhanded_ids(self) -> set[str]:
        """The ids of every pool's kernels that are not handed out: idle, starting, claimed,
        retiring; whichever replicas run the pools."""
        ids = await self._unhanded_ids(keys=[self.pools_key])
        return {i.decode() if isinstance(i, bytes) else i for i in ids}

    async def forget(self, alias: str, kernel_id: str) -> None:
        """Forget ``alias`` if it is still bound to ``kernel_id`` (the kernel is gone)."""
        await self._drop(keys=[self.key], args=[alias, "", kernel_id])

    async def aliases_by_kernel(self) -> dict[str, str]:
        """Kernel id -> the alias its client knows it by, for every bound alias."""
        shown: dict[str, str] = {}
        for alias, raw in (await self.client.hgetall(self.key)).items():
            entry = json.loads(raw)
            if "kernel_id" in entry:
                shown[entry["kernel_id"]] = alias.decode() if isinstance(alias, bytes) else alias
        return shown

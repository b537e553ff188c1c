"""A pool's records written back from what its kernels say of themselves.

Redis may lose acknowledged writes (a failover, a restart without persistence); each pooled
kernel keeps its own word (jkp.user: idle, or handed out and to whom). These scripts put that
word back into the pool's keys (see docs/redis.md), each only for a kernel no key names:

- a claimed kernel that refuses its set-up, as it was handed out before: from ``K:claimed``
  into ``K:handed`` under the user, alias and binding it names (``hand_over_elsewhere``);
- after the records were lost (``K:records`` gone), a kernel EG runs that no key names: an
  idle one back into ``K``, a handed-out one into ``K:handed`` with its binding and its
  user's slot (``restore_idle``, ``restore_handed``).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis

from jkp.services.store.claims import Claim
from jkp.services.store.pool_keys import PoolKeys
from jkp.services.store.scripts import script


class RecordStore:
    """Writes a pool's records back from its kernels' own word, and keeps the mark that says
    its records are whole."""

    def __init__(self, client: redis.Redis, keys: PoolKeys):
        self.client = client
        self.keys = keys
        self._hand_over_elsewhere = client.register_script(script("records/hand_over_elsewhere"))
        self._restore = client.register_script(script("records/restore"))

    def _keys(self, idempotency: str = "") -> list[str]:
        k = self.keys
        pool = [k.idle, k.starting, k.late, k.claimed, k.handed, k.retiring]
        return [*pool, k.aliases, k.users, idempotency]

    async def hand_over_elsewhere(
        self, claim: Claim, handed: dict[str, Any], binding: dict[str, Any] | None
    ) -> bool:
        """Move a claimed kernel that was handed out before (``handed``: its record, with
        ``alias`` when a gateway create bound it to ``binding``) into the handed-out hash;
        False when the claim was no longer this replica's."""
        idempotency = claim.idempotency
        key = self.keys.idempotency(idempotency.key) if idempotency else ""
        args = [claim.kernel_id, claim.replica, json.dumps(handed), handed.get("alias", "")]
        args += [json.dumps(binding or {}), idempotency.owner if idempotency else ""]
        return bool(await self._hand_over_elsewhere(keys=self._keys(key), args=args))

    async def restore_idle(self, kernel_id: str, model: dict[str, Any]) -> bool:
        """Put an idle kernel that no key names back into the idle list."""
        args = [kernel_id, "idle", json.dumps(model), "", ""]
        return bool(await self._restore(keys=self._keys(), args=args))

    async def restore_handed(
        self, kernel_id: str, handed: dict[str, Any], binding: dict[str, Any] | None
    ) -> bool:
        """Record a handed-out kernel that no key names as handed out (see
        hand_over_elsewhere)."""
        args = [kernel_id, "handed", json.dumps(handed), handed.get("alias", "")]
        args.append(json.dumps(binding or {}))
        return bool(await self._restore(keys=self._keys(), args=args))

    async def restore_retiring(self, kernel_id: str) -> bool:
        """Put a kernel that no key names, and that must be shut down, into the retiring set."""
        args = [kernel_id, "retiring", "", "", ""]
        return bool(await self._restore(keys=self._keys(), args=args))

    async def is_idle(self, kernel_id: str) -> bool:
        """Whether the idle list holds the kernel (a rebuild may have put it there)."""
        return kernel_id in {
            json.loads(m)["id"] for m in await self.client.lrange(self.keys.idle, 0, -1)
        }

    async def whole(self) -> bool:
        """Whether the mark written once the pool's records were whole is still there."""
        return bool(await self.client.exists(self.keys.records))

    async def mark_whole(self, replica: str) -> None:
        """Mark the pool's records whole: a Redis that loses its data loses the mark too."""
        seconds, _ = await self.client.time()
        await self.client.set(self.keys.records, json.dumps({"since": seconds, "by": replica}))

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

from jkp.services.store import _CLAIM_HOLDER, _NOW, Claim, PoolKeys
from jkp.services.user_kernels import USER_SLOTS

# Lua: whether kernel ``id`` is in any of the pool's keys (KEYS[1..6]: idle, starting, late,
# claimed, handed, retiring); and a handed-out kernel's record written back (KEYS[5]) with
# its binding (KEYS[7], unless the alias names something else already) and its user's slot
# (KEYS[8]).
_KNOWN = """
local function known(id)
  if redis.call('ZSCORE', KEYS[2], id) or redis.call('ZSCORE', KEYS[3], id) then return true end
  for i = 4, 6 do
    if redis.call('HEXISTS', KEYS[i], id) == 1 then return true end
  end
  for _, model in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if string.find(model, id, 1, true) and cjson.decode(model)['id'] == id then return true end
  end
  return false
end
local function write_handed(id, record, alias, binding)
  redis.call('HSET', KEYS[5], id, record)
  if alias ~= '' then redis.call('HSETNX', KEYS[7], alias, binding) end
  local user = cjson.decode(record)['user_id']
  local held = user_slots(KEYS[8], user)
  held[id] = 0
  store_user_slots(KEYS[8], user, held)
end
"""

# Replica ARGV[2]'s claim on kernel ARGV[1], whose kernel says it was handed out already: to
# K:handed under its own record (ARGV[3], alias ARGV[4], binding ARGV[5]). The claim's user
# gives its slot back, and its pop's idempotency record (KEYS[9], owner ARGV[6]) goes.
_HAND_OVER_ELSEWHERE = (
    _NOW
    + _CLAIM_HOLDER
    + USER_SLOTS
    + _KNOWN
    + """
if not held_by(KEYS[4], ARGV[1], ARGV[2]) then return 0 end
free_slot(KEYS[8], cjson.decode(redis.call('HGET', KEYS[4], ARGV[1]))['user_id'], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
write_handed(ARGV[1], ARGV[3], ARGV[4], ARGV[5])
if KEYS[9] ~= '' then
  local record = redis.call('GET', KEYS[9])
  if record and cjson.decode(record)['owner'] == ARGV[6] then redis.call('DEL', KEYS[9]) end
end
return 1
"""
)

# A kernel no key names: an idle one's model (ARGV[2] 'idle', ARGV[3]) onto the idle list, a
# handed-out one's record (ARGV[2] 'handed', ARGV[3], alias ARGV[4], binding ARGV[5]), or one
# to shut down (ARGV[2] 'retiring') into the retiring set.
_RESTORE = (
    _NOW
    + USER_SLOTS
    + _KNOWN
    + """
if known(ARGV[1]) then return 0 end
if ARGV[2] == 'idle' then
  redis.call('LPUSH', KEYS[1], ARGV[3])
elseif ARGV[2] == 'retiring' then
  redis.call('HSET', KEYS[6], ARGV[1], now)
else
  write_handed(ARGV[1], ARGV[3], ARGV[4], ARGV[5])
end
return 1
"""
)


class RecordStore:
    """Writes a pool's records back from its kernels' own word, and keeps the mark that says
    its records are whole."""

    def __init__(self, client: redis.Redis, keys: PoolKeys):
        self.client = client
        self.keys = keys
        self._hand_over_elsewhere = client.register_script(_HAND_OVER_ELSEWHERE)
        self._restore = client.register_script(_RESTORE)

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

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

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

# Lua: whether an alias is bound, or reserved by a create other than ``create`` whose
# reservation has not run out (needs ``now``); and its reservation for a create until
# ``seconds`` from now: a warm create's claim (PoolStore.claim) checks and reserves its
# client's id in the same script, and its next claim, when a kernel failed, finds it its own.
ALIAS_RESERVATION = """
local function alias_taken(aliases, alias, create)
  local entry = redis.call('HGET', aliases, alias)
  if not entry then return false end
  entry = cjson.decode(entry)
  if not entry['reserved_by'] then return true end
  return entry['reserved_by'] ~= create and entry['expires'] > now
end
local function reserve_alias(aliases, alias, create, seconds)
  redis.call('HSET', aliases, alias,
             cjson.encode({reserved_by = create, expires = now + tonumber(seconds)}))
end
"""

# Drop alias ARGV[1] when it is still create ARGV[2]'s reservation, or bound to kernel ARGV[3].
_DROP = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
entry = cjson.decode(entry)
if (ARGV[2] ~= '' and entry['reserved_by'] == ARGV[2])
   or (ARGV[3] ~= '' and entry['kernel_id'] == ARGV[3]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


# Lua: whether kernel ``id`` is one of a registered pool's (in hash ``pools``) that no client
# may reach. A plain find before decoding: most idle models do not hold the id at all.
_UNHANDED = """
local function unhanded(pools, id)
  for _, keys in ipairs(redis.call('HVALS', pools)) do
    keys = cjson.decode(keys)
    if redis.call('ZSCORE', keys['starting'], id)
       or (keys['late'] and redis.call('ZSCORE', keys['late'], id))
       or redis.call('HEXISTS', keys['claimed'], id) == 1
       or redis.call('HEXISTS', keys['retiring'], id) == 1 then
      return true
    end
    for _, model in ipairs(redis.call('LRANGE', keys['idle'], 0, -1)) do
      if string.find(model, id, 1, true) and cjson.decode(model)['id'] == id then return true end
    end
  end
  return false
end
"""

# Kernel id ARGV[1] as a request names it: {'bound', binding} when it is an alias (KEYS[1]),
# {'unhanded', ''} when it is a pool's kernel no client may reach (KEYS[2]), else {'', ''}.
_RESOLVE = (
    _UNHANDED
    + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and cjson.decode(entry)['kernel_id'] then return {'bound', entry} end
if unhanded(KEYS[2], ARGV[1]) then return {'unhanded', ''} end
return {'', ''}
"""
)

# The ids of every registered pool's (KEYS[1]) kernels that no client may reach.
_UNHANDED_IDS = """
local ids = {}
for _, keys in ipairs(redis.call('HVALS', KEYS[1])) do
  keys = cjson.decode(keys)
  for _, model in ipairs(redis.call('LRANGE', keys['idle'], 0, -1)) do
    table.insert(ids, cjson.decode(model)['id'])
  end
  for _, id in ipairs(redis.call('ZRANGE', keys['starting'], 0, -1)) do table.insert(ids, id) end
  for _, id in ipairs(redis.call('HKEYS', keys['claimed'])) do table.insert(ids, id) end
  for _, id in ipairs(redis.call('HKEYS', keys['retiring'])) do table.insert(ids, id) end
  if keys['late'] then
    for _, id in ipairs(redis.call('ZRANGE', keys['late'], 0, -1)) do table.insert(ids, id) end
  end
end
return ids
"""

# Whether alias ARGV[1] is bound, or reserved by a create whose reservation has not run out.
_TAKEN = _NOW + ALIAS_RESERVATION + "return alias_taken(KEYS[1], ARGV[1], '') and 1 or 0\n"

# Reserve alias ARGV[1] for create ARGV[2], ARGV[3] seconds, unless it is taken: 1 when reserved.
_RESERVE = (
    _NOW
    + ALIAS_RESERVATION
    + """
if alias_taken(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
reserve_alias(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
"""
)


class UnhandedKernel(LookupError):
    """The id names a pool's kernel that is not handed out: no client may reach it."""


class AliasStore:
    """Atomic operations on the aliases hash, and the pools' kernels no client may reach."""

    def __init__(self, client: redis.Redis, key: str, pools_key: str):
        self.client = client
        self.key = key
        self.pools_key = pools_key
        self._resolve = client.register_script(_RESOLVE)
        self._unhanded_ids = client.register_script(_UNHANDED_IDS)
        self._drop = client.register_script(_DROP)
        self._taken = client.register_script(_TAKEN)
        self._reserve = client.register_script(_RESERVE)

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

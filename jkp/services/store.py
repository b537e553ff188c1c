"""The Redis side of the pool: its keys and the atomic operations on them.

The idle list keeps the original Go service's format: EG kernel models as JSON strings at
``JKP_REDIS_KEY``, new ones pushed on the left, pops from the right. The rest of the pool's
state lives under keys derived from it (see docs/redis.md):

- ``<key>:starting``  sorted set, kernel id -> lease expiry (Redis time): kernels being started
- ``<key>:late``      sorted set, kernel id -> until when (Redis time) a start given up on may
  still appear on EG
- ``<key>:claimed``   hash, kernel id -> {model, user_id, claimed_at}: kernels being handed out
- ``<key>:handed``    hash, kernel id -> {user_id, handed_at}: kernels handed out that EG still has
- ``<key>:retiring``  hash, kernel id -> time: kernels taken out of the pool, to shut down on EG
- ``<key>:arrivals``  hash, Unix second (Redis time) -> pops and warm creates that arrived in it
  (a pool sized by demand only)
- ``<key>:start-latencies``  list: the seconds the pool's last starts took, newest first
- ``<key>:records``, ``<key>:rebuild``  the mark that the pool's records are whole, and whose
  turn it is to rebuild them from EG when it is gone (jkp.services.kernel_records)
- ``<JKP_REDIS_KEY>:idempotency:<k>``  string with expiry, shared by all pools: the pop that
  used idempotency key ``k``
- ``<JKP_REDIS_KEY>:aliases``  hash, shared by all pools: the gateway's kernel aliases
  (jkp.services.aliases)
- ``<JKP_REDIS_KEY>:pools``  hash, shared by all replicas: each pool's idle key -> the keys of
  its kernels no client may reach (PoolKeys.unhanded), whichever replicas run it
- ``<JKP_REDIS_KEY>:users``  hash, shared by all pools: the kernels each user holds, for
  max_kernels_per_user (jkp.services.user_kernels)

Every move between them is one Lua script, so a kernel is always in exactly one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ReadOnlyError
from traitlets import Any as AnyTrait
from traitlets import Dict, TraitError, default, validate
from traitlets.config import LoggingConfigurable

from jkp.errors import ApiError
from jkp.services import redis_connection
from jkp.services.aliases import ALIAS_RESERVATION, AliasStore
from jkp.services.user_kernels import USER_SLOTS, UserKernelStore, UserLimitReached
from jkp.services.waiting_pops import LEAVE_LINE, WAITING_LINE
from jkp.traits import EnvInt, EnvList, EnvUnicode, check_options

# Start latencies a pool keeps: its start latency is their median.
START_LATENCIES_KEPT = 10

# Redis server time in seconds, so leases do not depend on the replicas' clocks.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

# Whether a replica's heartbeat (in the sorted set REPLICAS, id -> expiry) has run out.
_DEAD = """
local function dead(replicas, replica)
  local expiry = redis.call('ZSCORE', replicas, replica)
  return (not expiry) or tonumber(expiry) <= now
end
"""

# A place in the pool for a kernel about to be started by replica ARGV[4] (KEYS[3]: owners).
# Whether an idle kernel's model is of spec SPEC: its "jkp_spec" fingerprint is SPEC, or it has
# none (pooled before fingerprints, e.g. by the original service), or SPEC is '' (any).
_OF_SPEC = """
local function of_spec(model, spec)
  local fingerprint = cjson.decode(model)['jkp_spec']
  return spec == '' or fingerprint == nil or fingerprint == spec
end
local function starting_of_spec(starting, specs, spec)
  local count = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', starting, '(' .. now, '+inf')) do
    local fingerprint = redis.call('HGET', specs, id)
    if spec == '' or not fingerprint or fingerprint == spec then count = count + 1 end
  end
  return count
end
local function idle_of_spec(idle, spec)
  if spec == '' then return redis.call('LLEN', idle) end
  local count = 0
  for _, model in ipairs(redis.call('LRANGE', idle, 0, -1)) do
    if of_spec(model, spec) then count = count + 1 end
  end
  return count
end
"""

# Kernels of another spec (ARGV[5]) do not count toward the target: during a roll-over the
# new spec's pool fills while the old kernels wait to be retired. The pool is registered
# (KEYS[5], ARGV[6]) in the same step: no kernel of it is ever outside the registry's reach.
_RESERVE = (
    _NOW
    + _OF_SPEC
    + """
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[5])
if idle_of_spec(KEYS[1], ARGV[5]) + live >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[5]) end
if KEYS[5] then redis.call('HSET', KEYS[5], KEYS[1], ARGV[6]) end
return 1
"""
)

# Pooled kernels are announced on channel ARGV[6] (jkp.services.waiting_pops).
# 1: pooled; 0: the lease is gone (expired and retired); -1: another replica took the start over.
_FINISH_START = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= ARGV[3] then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
redis.call('PUBLISH', ARGV[6], 'pooled')
return 1
"""

# Refresh replica ARGV[1]'s heartbeat for ARGV[2] seconds; forget heartbeats long expired.
# The pool registers itself (KEYS[3], ARGV[4]) too: its kernels pooled before it ever was.
_BEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if KEYS[3] then redis.call('HSET', KEYS[3], KEYS[4], ARGV[4]) end
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 3600)) do
  redis.call('ZREM', KEYS[1], replica)
  redis.call('HDEL', KEYS[2], replica)
end
return 1
"""
)

# The specs (KEYS[2]: replica -> spec) that live replicas (KEYS[1]) run.
_LIVE_SPECS = (
    _NOW
    + _DEAD
    + """
local specs = {}
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  if not dead(KEYS[1], entries[i]) then table.insert(specs, entries[i + 1]) end
end
return specs
"""
)

# A taken-over start EG does not have (KEYS[1] starting, KEYS[2] owners, KEYS[3] late): its place
# goes to a replacement now, and it stays recorded ARGV[3] seconds, in case its request reaches EG.
_DEFER_START = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# A late kernel (KEYS[5]) that EG now has: started again under replica ARGV[4] (lease ARGV[3]) if
# the pool of spec ARGV[5] is below target ARGV[2] and it is of that spec (1), else retired (-1).
_ADOPT_LATE = (
    _NOW
    + _OF_SPEC
    + """
if not redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[5], ARGV[1])
local fingerprint = redis.call('HGET', KEYS[4], ARGV[1])
local own = ARGV[5] == '' or not fingerprint or fingerprint == ARGV[5]
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[5])
if own and idle_of_spec(KEYS[1], ARGV[5]) + live < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[5]) end
  return 1
end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], now)
return -1
"""
)

# A late kernel (KEYS[1]) whose time ran out is forgotten, with its spec (KEYS[2]).
_FORGET_LATE = (
    _NOW
    + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)

# Starts (KEYS[1], owners KEYS[2]) and claims (KEYS[3]) whose replica's heartbeat ran out.
_ORPHANS = (
    _NOW
    + _DEAD
    + """
local starts, claims = {}, {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local owner = redis.call('HGET', KEYS[2], id)
  if owner and dead(KEYS[4], owner) then table.insert(starts, id) end
end
local entries = redis.call('HGETALL', KEYS[3])
for i = 1, #entries, 2 do
  local replica = cjson.decode(entries[i + 1])['replica']
  if replica and dead(KEYS[4], replica) then table.insert(claims, entries[i]) end
end
return {starts, claims}
"""
)

# Replica ARGV[2] takes over the start of kernel ARGV[1] if its starter's heartbeat ran out.
_TAKE_OVER_START = (
    _NOW
    + _DEAD
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner or not dead(KEYS[3], owner) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# Replica ARGV[2] takes over the claim on kernel ARGV[1] if its pop's replica's heartbeat ran out.
_TAKE_OVER_CLAIM = (
    _NOW
    + _DEAD
    + """
local claim = redis.call('HGET', KEYS[1], ARGV[1])
if not claim then return false end
claim = cjson.decode(claim)
if not claim['replica'] or not dead(KEYS[2], claim['replica']) then return false end
claim['replica'] = ARGV[2]
claim['claimed_at'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(claim))
return claim['model']
"""
)

# A pop's claim. With an idempotency key (KEYS[4]) it first looks at the key's record: the key
# used for another request (its fingerprint, ARGV[9]) is a conflict, a finished pop's model is
# answered again, another pop still in flight with it is "pending"; else the claim records this
# pop (ARGV[4]) as the key's owner, until the claim lease (ARGV[5], ms) runs out or the pop ends.
# The claim names its replica (ARGV[2]).
# A gateway create's claim names its client's kernel id (ARGV[6]): "taken" when that is bound
# or reserved by another create in the aliases hash (KEYS[3]), else reserved with the claim for
# create ARGV[7], ARGV[8] seconds (the hand-over writes the binding over it).
# With max_kernels_per_user (ARGV[10], -1: none) the user's slots (KEYS[5]) are counted: "limit"
# and their count when the user holds that many, else the claimed kernel takes one.
# A pool sized by demand counts a request's first claim (ARGV[11]: the arrivals' time to live,
# 0: not counted) in its time bucket (ARGV[14] seconds wide) of the arrivals hash (KEYS[6]).
# Waiting pops take kernels first come first served (jkp.services.waiting_pops): the request
# ARGV[12] claims only while fewer live waiters are ahead of it in the line (KEYS[7], KEYS[8])
# than kernels are idle, and waits in line otherwise, until ARGV[13] seconds from now.
_CLAIM = (
    _NOW
    + _OF_SPEC
    + ALIAS_RESERVATION
    + USER_SLOTS
    + WAITING_LINE
    + """
local idem = KEYS[4]
if idem == '' then idem = nil end
local alias = ARGV[6]
if alias ~= '' and alias_taken(KEYS[3], alias, ARGV[7]) then return {'taken', ''} end
if idem then
  local record = redis.call('GET', idem)
  if record then
    record = cjson.decode(record)
    if record['request'] ~= ARGV[9] then return {'conflict', ''} end
    if record['model'] then return {'replay', record['model']} end
    if record['owner'] ~= ARGV[4] then return {'pending', ''} end
  end
end
local limit = tonumber(ARGV[10])
local slots = nil
if limit >= 0 then
  local count
  slots, count = user_slots(KEYS[5], ARGV[1])
  if count >= limit then return {'limit', tostring(count)} end
end
if tonumber(ARGV[11]) > 0 then
  local bucket = string.format('%.0f', math.floor(now / tonumber(ARGV[14])))
  redis.call('HINCRBY', KEYS[6], bucket, 1)
  redis.call('EXPIRE', KEYS[6], ARGV[11])
end
local waiter = ARGV[12]
if waiter ~= '' then
  local ahead = waiters_ahead(KEYS[7], KEYS[8], waiter, ARGV[3])
  if ahead > 0 and idle_of_spec(KEYS[1], ARGV[3]) <= ahead then
    wait_in_line(KEYS[7], KEYS[8], waiter, ARGV[3], tonumber(ARGV[13]))
    return {'empty', ''}
  end
end
-- The oldest idle kernel of this replica's spec (ARGV[3]): nearly always the last one.
local model = redis.call('LINDEX', KEYS[1], -1)
if model and not of_spec(model, ARGV[3]) then
  model = nil
  local models = redis.call('LRANGE', KEYS[1], 0, -1)
  for i = #models, 1, -1 do
    if of_spec(models[i], ARGV[3]) then model = models[i]; break end
  end
end
if not model then
  if waiter ~= '' then wait_in_line(KEYS[7], KEYS[8], waiter, ARGV[3], tonumber(ARGV[13])) end
  return {'empty', ''}
end
if waiter ~= '' then leave_line(KEYS[7], KEYS[8], waiter) end
redis.call('LREM', KEYS[1], -1, model)
local id = cjson.decode(model)['id']
if slots then
  slots[id] = 0
  store_user_slots(KEYS[5], ARGV[1], slots)
end
local replica = nil
if ARGV[2] ~= '' then replica = ARGV[2] end
local claim = {model = model, user_id = ARGV[1], claimed_at = now, replica = replica}
redis.call('HSET', KEYS[2], id, cjson.encode(claim))
if idem then
  local record = {user_id = ARGV[1], owner = ARGV[4], kernel_id = id, request = ARGV[9]}
  redis.call('SET', idem, cjson.encode(record), 'PX', ARGV[5])
end
if alias ~= '' then reserve_alias(KEYS[3], alias, ARGV[7], ARGV[8]) end
return {'claimed', model}
"""
)

# A claim's replica, or nil when none holds it (a claim of jkp's replicas names its replica).
_CLAIM_HOLDER = """
local function held_by(claims, id, replica)
  local claim = redis.call('HGET', claims, id)
  if not claim then return false end
  local holder = cjson.decode(claim)['replica']
  return replica == '' or not holder or holder == replica
end
"""

# Replica ARGV[3]'s claim becomes a hand-out; an idempotency record (KEYS[4], when ARGV[4] is a
# model) keeps the model, with the request's fingerprint (ARGV[8]); a gateway create's binding
# (ARGV[7]) is kept under the id its client knows the kernel by (ARGV[6]) in the aliases hash
# (KEYS[3]), in the same step.
_HAND_OVER = (
    _NOW
    + _CLAIM_HOLDER
    + """
if not held_by(KEYS[1], ARGV[1], ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local handed = {user_id = ARGV[2], handed_at = now}
if ARGV[6] ~= '' then
  handed['alias'] = ARGV[6]
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(handed))
if ARGV[4] ~= '' then
  local record = {user_id = ARGV[2], kernel_id = ARGV[1], model = ARGV[4], request = ARGV[8]}
  redis.call('SET', KEYS[4], cjson.encode(record), 'PX', ARGV[5])
end
return 1
"""
)

# Handed-out kernels (ARGV) that EG no longer has are forgotten, with the alias each was bound
# to (KEYS[2]) while that alias still names it, and their users' slots (KEYS[3]).
_FORGET_HANDED = (
    _NOW
    + USER_SLOTS
    + """
for _, id in ipairs(ARGV) do
  local handed = redis.call('HGET', KEYS[1], id)
  if handed then
    free_slot(KEYS[3], cjson.decode(handed)['user_id'], id)
    local alias = cjson.decode(handed)['alias']
    if alias then
      local binding = redis.call('HGET', KEYS[2], alias)
      if binding and cjson.decode(binding)['kernel_id'] == id then
        redis.call('HDEL', KEYS[2], alias)
      end
    end
    redis.call('HDEL', KEYS[1], id)
  end
end
return 1
"""
)

# A claim that ends without a hand-out: back to the pop end of the idle list ("release") or to
# the retiring set ("retire"), if replica ARGV[5] holds it ('' for any); a release is announced
# on channel ARGV[6] to the pops waiting for a kernel. The pop's idempotency
# record goes too, so a retry starts afresh, and the slot the claim took of its user (KEYS[4]).
_END_CLAIM = (
    _NOW
    + _CLAIM_HOLDER
    + USER_SLOTS
    + """
if not held_by(KEYS[1], ARGV[1], ARGV[5]) then return 0 end
free_slot(KEYS[4], cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))['user_id'], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[2] == 'release' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[6], 'released')
else
  redis.call('HSET', KEYS[2], ARGV[1], now)
end
if KEYS[3] ~= '' then
  local record = redis.call('GET', KEYS[3])
  if record and cjson.decode(record)['owner'] == ARGV[4] then redis.call('DEL', KEYS[3]) end
end
return 1
"""
)

# Any other move into the retiring set: from the idle list (ARGV[3] is the stored model), the
# start leases (and their owners, KEYS[3]) or the handed-out hash (ARGV[1] names KEYS[1]'s type).
_RETIRE = (
    _NOW
    + USER_SLOTS
    + """
local removed
if ARGV[1] == 'list' then
  removed = redis.call('LREM', KEYS[1], 1, ARGV[3])
elseif ARGV[1] == 'zset' then
  removed = redis.call('ZREM', KEYS[1], ARGV[2])
  if KEYS[3] then redis.call('HDEL', KEYS[3], ARGV[2]) end
  if KEYS[4] then redis.call('HDEL', KEYS[4], ARGV[2]) end
else
  -- A handed-out kernel taken back: the alias a gateway create bound it to goes with it,
  -- and its user's slot (KEYS[4]).
  local handed = redis.call('HGET', KEYS[1], ARGV[2])
  removed = redis.call('HDEL', KEYS[1], ARGV[2])
  if handed then free_slot(KEYS[4], cjson.decode(handed)['user_id'], ARGV[2]) end
  local alias = handed and cjson.decode(handed)['alias']
  if alias and KEYS[3] then
    local binding = redis.call('HGET', KEYS[3], alias)
    if binding and cjson.decode(binding)['kernel_id'] == ARGV[2] then
      redis.call('HDEL', KEYS[3], alias)
    end
  end
end
if removed == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], now)
return 1
"""
)

# Retire the newest idle kernels of spec ARGV[2] above target ARGV[1].
_TRIM_SURPLUS = (
    _NOW
    + _OF_SPEC
    + """
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[2])
local surplus = idle_of_spec(KEYS[1], ARGV[2]) + live - tonumber(ARGV[1])
local ids = {}
if surplus <= 0 then return ids end
for _, model in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if surplus <= 0 then break end
  if of_spec(model, ARGV[2]) then
    redis.call('LREM', KEYS[1], 1, model)
    local id = cjson.decode(model)['id']
    redis.call('HSET', KEYS[3], id, now)
    table.insert(ids, id)
    surplus = surplus - 1
  end
end
return ids
"""
)

# Retire the oldest idle kernels of spec ARGV[2] above target ARGV[1]; returns their models.
_TRIM_OLDEST = (
    _NOW
    + _OF_SPEC
    + """
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[2])
local surplus = idle_of_spec(KEYS[1], ARGV[2]) + live - tonumber(ARGV[1])
local models = {}
if surplus <= 0 then return models end
local idle = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #idle, 1, -1 do
  if surplus <= 0 then break end
  if of_spec(idle[i], ARGV[2]) then
    redis.call('LREM', KEYS[1], -1, idle[i])
    redis.call('HSET', KEYS[3], cjson.decode(idle[i])['id'], now)
    table.insert(models, idle[i])
    surplus = surplus - 1
  end
end
return models
"""
)

# A pool's demand: Redis time, the arrivals (KEYS[1], in buckets of ARGV[2] seconds) of the
# last ARGV[1] seconds (older ones are dropped), the recent start latencies (KEYS[2]), the
# earliest live start lease (KEYS[3]), and the idle (KEYS[4]) plus live starting kernels.
_DEMAND = (
    _NOW
    + """
local cutoff = math.floor((now - tonumber(ARGV[1])) / tonumber(ARGV[2]))
local buckets = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if tonumber(entries[i]) < cutoff then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    table.insert(buckets, entries[i])
    table.insert(buckets, entries[i + 1])
  end
end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local held = redis.call('LLEN', KEYS[4]) + redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
return {t[1], t[2], buckets, redis.call('LRANGE', KEYS[2], 0, -1), oldest[2] or '', held}
"""
)

_EXPIRED_STARTING = _NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)\n"

_COUNTS = (
    _NOW
    + """
return {redis.call('LLEN', KEYS[1]), redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
        redis.call('HLEN', KEYS[3]), redis.call('HLEN', KEYS[4])}
"""
)

_STALE_CLAIMS = (
    _NOW
    + """
local stale = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local claim = cjson.decode(entries[i + 1])
  if claim['claimed_at'] < now - tonumber(ARGV[1]) then
    table.insert(stale, entries[i])
    table.insert(stale, claim['model'])
  end
end
return stale
"""
)


def _derived_key(suffix: str, what: str) -> property:
    """A key of the pool named after its idle-list key: ``<idle>:<suffix>``."""
    return property(lambda keys: f"{keys.idle}:{suffix}", doc=what)


@dataclass(frozen=True)
class PoolKeys:
    """The Redis keys of one pool, all derived from its idle-list key (see docs/redis.md), and
    those all pools share: the aliases hash, the pools registry, the users' kernels, and the
    idempotency records under ``shared`` (JKP_REDIS_KEY), as a key names one request whatever
    its pool."""

    idle: str
    aliases: str = ""
    pools: str = ""
    users: str = ""  # user -> the kernels it holds (jkp.services.user_kernels), for all pools
    shared: str = ""

    starting = _derived_key("starting", "kernel id -> start lease expiry")
    late = _derived_key("late", "kernel id -> until when a start given up on may appear on EG")
    start_owners = _derived_key("start-owners", "kernel id -> the replica starting it")
    start_specs = _derived_key("start-specs", "kernel id -> the spec it is started as")
    claimed = _derived_key("claimed", "kernel id -> claim of a pop in progress")
    handed = _derived_key("handed", "kernel id -> who it was handed to")
    retiring = _derived_key("retiring", "kernel id -> when it was taken out of the pool")
    arrivals = _derived_key("arrivals", "Unix second -> pops and warm creates that arrived")
    start_latencies = _derived_key("start-latencies", "the last starts' seconds, newest first")
    waiting = _derived_key("waiting", "waiter id -> when it began waiting: pops in line")
    waiting_until = _derived_key("waiting-until", "waiter id -> its deadline and spec")
    pooled = _derived_key("pooled", "channel: a kernel was pooled, or put back")
    replicas = _derived_key("replicas", "replica id -> heartbeat expiry")
    replica_specs = _derived_key("replica-specs", "replica id -> the spec it runs")
    activation = _derived_key("activation", "whose turn it is to activate idle kernels")
    upkeep = _derived_key("upkeep", "whose turn it is for the checks one replica does for all")
    records = _derived_key("records", "the mark that the pool's records are whole")
    rebuild = _derived_key("rebuild", "whose turn it is to rebuild the records from EG")

    def idempotency(self, key: str) -> str:
        return f"{self.shared or self.idle}:idempotency:{key}"

    def unhanded(self) -> str:
        """The keys of the pool's kernels no client may reach, as registered in ``pools``."""
        keys = {"idle": self.idle, "starting": self.starting, "late": self.late}
        return json.dumps({**keys, "claimed": self.claimed, "retiring": self.retiring})


@dataclass(frozen=True)
class DemandData:
    """What a pool's size is computed from, as one script read it: Redis time, arrivals per
    time bucket (bucket ``b`` holds those in ``[b, b + 1) * bucket_seconds`` of Unix time),
    recent start latencies (newest first), the earliest live start lease's expiry."""

    now: float
    buckets: dict[int, int]
    latencies: list[float]
    oldest_start_expiry: float | None = None
    bucket_seconds: float = 1.0
    held: int | None = None  # idle plus live starting kernels, of any spec


@dataclass(frozen=True)
class Idempotency:
    """A pop's idempotency key, the pop (``owner``) that holds it while it runs, and the
    fingerprint of what it asked (``request``): the key with another request is a conflict."""

    key: str
    owner: str
    request: str = ""


@dataclass(frozen=True)
class Claim:
    """A kernel taken out of the idle list for one user, not yet handed over."""

    kernel_id: str
    model_json: str
    idempotency: Idempotency | None = None
    # The replica whose pop holds the claim; "" acts on the claim whoever holds it.
    replica: str = ""

    @property
    def model(self) -> dict[str, Any]:
        return json.loads(self.model_json)


@dataclass(frozen=True)
class Replay:
    """The model an earlier pop with the same idempotency key and user answered."""

    model_json: str

    @property
    def model(self) -> dict[str, Any]:
        return json.loads(self.model_json)


class IdempotencyConflict(ApiError):
    """The idempotency key was used for another request (user, pool or env)."""

    status_code, reason = 409, "Idempotency-Key conflict"


class IdempotencyPending(Exception):
    """Another pop with the same idempotency key is still running."""


class AliasTaken(Exception):
    """A gateway create's client-side kernel id is bound, or reserved by another create."""


class PoolStore:
    """Atomic operations on one pool's keys."""

    def __init__(self, client: redis.Redis, keys: PoolKeys):
        self.client = client
        self.keys = keys
        self._reserve = client.register_script(_RESERVE)
        self._finish_start = client.register_script(_FINISH_START)
        self._claim = client.register_script(_CLAIM)
        self._hand_over = client.register_script(_HAND_OVER)
        self._end_claim = client.register_script(_END_CLAIM)
        self._retire = client.register_script(_RETIRE)
        self._trim_surplus = client.register_script(_TRIM_SURPLUS)
        self._trim_oldest = client.register_script(_TRIM_OLDEST)
        self._demand = client.register_script(_DEMAND)
        self._beat = client.register_script(_BEAT)
        self._live_specs = client.register_script(_LIVE_SPECS)
        self._orphans = client.register_script(_ORPHANS)
        self._take_over_start = client.register_script(_TAKE_OVER_START)
        self._take_over_claim = client.register_script(_TAKE_OVER_CLAIM)
        self._defer_start = client.register_script(_DEFER_START)
        self._adopt_late = client.register_script(_ADOPT_LATE)
        self._forget_late = client.register_script(_FORGET_LATE)
        self._expired_starting = client.register_script(_EXPIRED_STARTING)
        self._stale_claims = client.register_script(_STALE_CLAIMS)
        self._counts = client.register_script(_COUNTS)
        self._forget_handed = client.register_script(_FORGET_HANDED)
        self._leave_line = client.register_script(LEAVE_LINE)
        # The users' kernel counts are shared by all pools; the cold kernels' side of them.
        self.user_kernels = UserKernelStore(client, keys.users)

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
        return {_text(s) for s in await self._live_specs(keys=[k.replicas, k.replica_specs])}

    async def live_replicas(self) -> list[str]:
        """The replicas whose heartbeat has not run out."""
        seconds, microseconds = await self.client.time()
        now = seconds + microseconds / 1e6
        live = await self.client.zrangebyscore(self.keys.replicas, f"({now}", "+inf")
        return sorted(_text(r) for r in live)

    async def orphans(self) -> tuple[list[str], list[str]]:
        """Kernel ids of the starts and of the claims whose replica's heartbeat ran out."""
        k = self.keys
        starts, claims = await self._orphans(
            keys=[k.starting, k.start_owners, k.claimed, k.replicas]
        )
        return [_text(i) for i in starts], [_text(i) for i in claims]

    async def start_spec(self, kernel_id: str) -> str | None:
        """The spec fingerprint a kernel being started was started as, if recorded."""
        spec = await self.client.hget(self.keys.start_specs, kernel_id)
        return None if spec is None else _text(spec)

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
        return [_text(i) for i in await self.client.zrange(self.keys.late, 0, -1)]

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

    async def take_over_claim(self, kernel_id: str, replica: str) -> Claim | None:
        """Make ``replica`` the holder of a claim whose pop's replica's heartbeat ran out; the
        claim for exactly one replica, however many try, else None."""
        k = self.keys
        model_json = await self._take_over_claim(
            keys=[k.claimed, k.replicas], args=[kernel_id, replica]
        )
        if model_json is None:
            return None
        return Claim(kernel_id, _text(model_json), replica=replica)

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
        outcome, model_json = [_text(v) for v in await self._claim(keys=keys, args=args)]
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
        return [_text(m) for m in models]

    async def demand(self, keep_seconds: float, bucket_seconds: float = 1.0) -> DemandData:
        """What the pool's size is computed from (see DemandData), its arrivals counted in
        buckets of ``bucket_seconds``; arrivals older than ``keep_seconds`` are dropped on the
        way."""
        k = self.keys
        seconds, micros, flat, latencies, oldest, held = await self._demand(
            keys=[k.arrivals, k.start_latencies, k.starting, k.idle],
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
        )

    async def forget_retired(self, kernel_id: str) -> None:
        """Drop a kernel from the retiring set once EG has shut it down."""
        await self.client.hdel(self.keys.retiring, kernel_id)

    async def idle_models(self) -> list[str]:
        """The idle list as stored (JSON strings), oldest last."""
        return [_text(m) for m in await self.client.lrange(self.keys.idle, 0, -1)]

    async def retiring_ids(self) -> list[str]:
        """Kernels waiting to be shut down on EG."""
        return [_text(i) for i in await self.client.hkeys(self.keys.retiring)]

    async def expired_starting_ids(self) -> list[str]:
        """Kernels whose start lease expired: their starter died or gave up."""
        return [_text(i) for i in await self._expired_starting(keys=[self.keys.starting])]

    async def stale_claims(self, max_age: float) -> list[Claim]:
        """Claims older than ``max_age`` seconds: the replica handing them out died or hung."""
        flat = await self._stale_claims(keys=[self.keys.claimed], args=[max_age])
        return [Claim(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def take_turn(self, key: str, owner: str, seconds: float) -> bool:
        """True for one replica per ``seconds`` at ``key``: the one whose turn it is now."""
        return bool(await self.client.set(key, owner, nx=True, px=int(seconds * 1000)))

    async def take_activation_turn(self, owner: str, seconds: float) -> bool:
        """True for one replica per ``seconds``: the one that sweeps the idle kernels now."""
        return await self.take_turn(self.keys.activation, owner, seconds)

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
        return {_text(k): json.loads(v) for k, v in raw.items()}

    async def handed_page(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page of the handed-out kernel ids (HSCAN): the next cursor (0: done) and ids."""
        cursor, page = await self.client.hscan(self.keys.handed, cursor, count=count)
        return int(cursor), [_text(k) for k in page]

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore(LoggingConfigurable):
    """The Redis connection of jkp and the pools stored in it."""

    redis_url = EnvUnicode(
        "",
        env="JKP_REDIS_URL",
        help=(
            "Redis URL, e.g. rediss://:password@host:6380/0; when set it overrides "
            "redis_host, redis_port and redis_db"
        ),
    ).tag(config=True)

    redis_host = EnvUnicode("127.0.0.1", env="JKP_REDIS_HOST", help="Redis host").tag(config=True)

    redis_port = EnvInt(6379, env="JKP_REDIS_PORT", help="Redis port", min=1, max=65535).tag(
        config=True
    )

    redis_db = EnvInt(0, env="JKP_REDIS_DB", help="Redis database number", min=0).tag(config=True)

    redis_password = EnvUnicode(
        "",
        env="JKP_REDIS_PASSWORD",
        help="Password of the Redis server (the master, with sentinels); a URL's own wins",
    ).tag(config=True)

    redis_sentinels = EnvList(
        [],
        env="JKP_REDIS_SENTINELS",
        help=(
            "Redis Sentinel addresses, host:port,host:port,...; when set, jkp uses the master "
            "they name redis_sentinel_master, following its failovers, instead of redis_url "
            "or redis_host and redis_port"
        ),
    ).tag(config=True)

    redis_sentinel_master = EnvUnicode(
        "mymaster",
        env="JKP_REDIS_SENTINEL_MASTER",
        help="The name the sentinels monitor the master under (sentinel monitor <name> ...)",
    ).tag(config=True)

    redis_sentinel_password = EnvUnicode(
        "",
        env="JKP_REDIS_SENTINEL_PASSWORD",
        help="Password of the sentinels themselves (their requirepass); empty: none",
    ).tag(config=True)

    key = EnvUnicode(
        "tablegpt-test:kernels:idle",
        env="JKP_REDIS_KEY",
        help="Redis key of the idle-kernel list; the pool's other keys are derived from it",
    ).tag(config=True)

    client_kwargs = Dict(
        help="Extra keyword arguments for redis.asyncio.Redis (e.g. ssl_ca_certs)"
    ).tag(config=True)

    sentinel = AnyTrait(
        None, allow_none=True, help="The Sentinel client, when redis_sentinels are set"
    )

    client = AnyTrait(help="The redis.asyncio.Redis client; built from the traits above")

    @validate("redis_sentinels")
    def _check_sentinels(self, proposal: Any) -> list[str]:
        # "a:1,b:2" as one value (the command line's) is two addresses, as in the env var.
        addresses = [a.strip() for a in ",".join(proposal.value).split(",") if a.strip()]
        for address in addresses:
            try:
                redis_connection.parse_address(address)
            except ValueError as e:
                raise TraitError(str(e)) from None
        return addresses

    @default("sentinel")
    def _sentinel_default(self) -> redis_connection.Sentinel | None:
        if not self.redis_sentinels:
            return None
        return redis_connection.sentinel(self.redis_sentinels, self.redis_sentinel_password)

    @default("client")
    def _client_default(self) -> redis.Redis:
        # Built before the app checks the options: a bad one must be named, not a traceback.
        check_options(self)
        kwargs = redis_connection.fail_fast_options()
        if self.redis_password:
            kwargs["password"] = self.redis_password
        kwargs.update(self.client_kwargs)
        if self.sentinel is not None:
            return self.sentinel.master_for(self.redis_sentinel_master, db=self.redis_db, **kwargs)
        if self.redis_url:
            return redis.Redis.from_url(self.redis_url, **kwargs)
        return redis.Redis(host=self.redis_host, port=self.redis_port, db=self.redis_db, **kwargs)

    async def ping(self) -> None:
        """Raise RedisError unless Redis answers, and with sentinels, unless it is the master
        (a connection kept from before a failover may reach the demoted one)."""
        if self.sentinel is None:
            await self.client.ping()
            return
        for _ in range(2):
            role = _text((await self.client.execute_command("ROLE"))[0])
            if role == "master":
                return
            # Idle connections to it are dropped: the next one asks the sentinels again.
            await self.client.connection_pool.disconnect(inuse_connections=False)
        raise ReadOnlyError(f"the Redis the sentinels named master is a {role} now")

    def pool(self, key: str | None = None) -> PoolStore:
        """The store of the pool whose idle list is at ``key`` (default: the ``key`` trait)."""
        keys = PoolKeys(
            key or self.key, self.aliases_key, self.pools_key, self.users_key, shared=self.key
        )
        return PoolStore(self.client, keys)

    @property
    def users_key(self) -> str:
        """The hash of the kernels each user holds, shared by all pools."""
        return f"{self.key}:users"

    @property
    def aliases_key(self) -> str:
        """The hash of the gateway's kernel aliases, shared by all pools."""
        return f"{self.key}:aliases"

    @property
    def pools_key(self) -> str:
        """The hash where every replica's pools register the keys of their unhanded kernels."""
        return f"{self.key}:pools"

    @property
    def bridges_channel(self) -> str:
        """The channel where replicas announce the kernel websockets they bridge."""
        return f"{self.key}:bridges"

    def aliases(self) -> AliasStore:
        """The store of the gateway's kernel aliases."""
        return AliasStore(self.client, self.aliases_key, self.pools_key)

    async def close(self) -> None:
        """Close the connections to Redis (and to the sentinels)."""
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()

"""The Redis keys of a pool (PoolKeys).

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
  turn it is to rebuild them from EG when it is gone (kernel_records.py)
- ``<JKP_REDIS_KEY>:idempotency:<k>``  string with expiry, shared by all pools: the pop that
  used idempotency key ``k``
- ``<JKP_REDIS_KEY>:aliases``  hash, shared by all pools: the gateway's kernel aliases
  (aliases.py)
- ``<JKP_REDIS_KEY>:pools``  hash, shared by all replicas: each pool's idle key -> the keys of
  its kernels no client may reach (PoolKeys.unhanded), whichever replicas run it
- ``<JKP_REDIS_KEY>:users``  hash, shared by all pools: the kernels each user holds, for
  max_kernels_per_user (user_kernels.py)

Every move between them is one Lua script, so a kernel is always in exactly one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


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
    users: str = ""  # user -> the kernels it holds (jkp.services.store.user_kernels), for all pools
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

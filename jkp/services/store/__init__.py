"""The one place jkp talks to Redis: RedisStore (redis_store.py) and, in it, each pool's
PoolStore (pool_store.py) on its keys (pool_keys.py); the gateway's aliases (aliases.py), the
users' kernel counts (user_kernels.py), the pools' records written back (kernel_records.py).
Every move is a Lua script from lua/ (scripts.py reads them)."""

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
from jkp.services.store.pool_store import PoolStore
from jkp.services.store.redis_store import RedisStore
from jkp.services.store.user_kernels import UserLimitReached

__all__ = [
    "AliasTaken",
    "Claim",
    "DemandData",
    "Idempotency",
    "IdempotencyConflict",
    "IdempotencyPending",
    "PoolKeys",
    "PoolStore",
    "RedisStore",
    "Replay",
    "UserLimitReached",
]

"""The kernels each user holds, counted in Redis against ``max_kernels_per_user`` for all replicas.

Two hashes, shared by all pools (see docs/redis.md):

- ``<JKP_REDIS_KEY>:users``  user -> JSON {kernel id or a cold create's token: expiry}; the
  expiry (Redis time) is 0 while the kernel is the user's, a time for a cold create still
  waiting for EG's answer (a replica that dies then holds the slot no longer than that)
- ``<JKP_REDIS_KEY>:users:cold``  kernel id -> user, for the kernels EG started cold for a
  create

A pooled kernel's slot is taken in the script that claims it for its user (PoolStore.claim)
and given back in the scripts that end the claim without a hand-over, take the kernel back, or
forget it once it is deleted or gone from EG: the user is the one its claim or hand-out record
names. The pool's own kernels (idle, starting, retiring) are never counted.

A cold kernel's slot is taken before its create goes to EG (take_cold), becomes the kernel's
once EG answered with its id (confirm_cold), and is given back when the create failed, when
the kernel is deleted through jkp, and when the handed-out check finds it gone from EG (EG's
culler, or a DELETE sent straight to EG): it never holds a slot forever.
"""

from __future__ import annotations

import redis.asyncio as redis

from jkp.errors import ApiError
from jkp.services.store.scripts import script


class UserLimitReached(ApiError):
    """The user holds ``max_kernels_per_user`` kernels already; the text is EG's own."""

    status_code, reason = 403, "Forbidden"

    def __init__(self, limit: int, user: str, count: int):
        # EG's RemoteMappingKernelManager._enforce_kernel_limits, word for word.
        super().__init__(
            f"A max kernels per user limit has been set to {limit} and user '{user}' "
            f"currently has {count} active and pending {'kernel' if count == 1 else 'kernels'}."
        )
        self.limit = limit
        self.user = user
        self.count = count


class UserKernelStore:
    """Atomic operations on the users' kernel counts for cold creates; pooled kernels are
    counted by the pool's own scripts (PoolStore)."""

    def __init__(self, client: redis.Redis, users_key: str):
        self.client = client
        self.keys = [users_key, f"{users_key}:cold"]
        self._take = client.register_script(script("user_kernels/take"))
        self._confirm = client.register_script(script("user_kernels/confirm"))
        self._release = client.register_script(script("user_kernels/release"))
        self._forget_cold = client.register_script(script("user_kernels/forget_cold"))

    async def take_cold(self, user: str, token: str, limit: int, lease_seconds: float) -> None:
        """Take a slot of ``user`` for a cold create (``token``) for up to ``lease_seconds``;
        UserLimitReached when the user holds ``limit`` already."""
        taken, count = await self._take(
            keys=self.keys[:1], args=[user, token, limit, lease_seconds]
        )
        if not taken:
            raise UserLimitReached(limit, user, int(count))

    async def confirm_cold(self, user: str, token: str, kernel_id: str) -> None:
        """The cold create ``token`` started kernel ``kernel_id``: the slot is the kernel's."""
        await self._confirm(keys=self.keys, args=[user, token, kernel_id])

    async def release(self, user: str, token: str) -> None:
        """Give back the slot of a cold create that started no kernel."""
        await self._release(keys=self.keys[:1], args=[user, token])

    async def forget_cold(self, kernel_ids: list[str]) -> None:
        """Forget cold kernels deleted or gone from EG, and give their slots back."""
        if kernel_ids:
            await self._forget_cold(keys=self.keys, args=kernel_ids)

    async def cold_page(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page of the cold kernel ids (HSCAN): the next cursor (0: done) and ids."""
        cursor, page = await self.client.hscan(self.keys[1], cursor, count=count)
        return int(cursor), [_text(k) for k in page]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Creates that go to EG as they came (cold), with the client's id reserved and the kernel
counted against its user."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid

from redis.exceptions import RedisError

from jkp.services.gateway import Forwarded, GatewayClient
from jkp.services.kernels.eg_api import already_exists, refused, with_env
from jkp.services.pool.registry import PoolRegistry
from jkp.services.store.aliases import AliasStore
from jkp.services.store.user_kernels import UserLimitReached

# Added to EG's request timeout: how long a cold create's slot waits for EG's answer.
_COLD_SLOT_MARGIN = 5.0


@dataclasses.dataclass(frozen=True)
class ColdCreates:
    """EG's own answers to creates, passed as they came; ``user_limit`` is KernelService's
    max_kernels_per_user (-1: none)."""

    pools: PoolRegistry
    gateway: GatewayClient
    aliases: AliasStore
    user_limit: int
    log: logging.Logger | logging.LoggerAdapter

    async def create(self, body: bytes, user: str) -> Forwarded:
        """EG's answer to the create as it came, unless it asks for an id a warm kernel has
        or ``user`` holds max_kernels_per_user kernels (KernelRequestError 403)."""
        try:
            env = json.loads(body or b"{}").get("env") or {}
            alias = env.get("KERNEL_ID") if isinstance(env, dict) else None
        except (ValueError, AttributeError):
            alias = None
        create_id = ""
        if isinstance(alias, str) and alias:
            # Reserved, as a warm create's claim reserves it, until EG answered: then EG has
            # the id and a warm create's question to EG finds it. Checked and forwarded
            # instead, a warm create of the id could bind a kernel while EG starts this one.
            create_id = uuid.uuid4().hex
            try:
                reserved = await self.aliases.reserve(
                    alias, create_id, self.gateway.request_timeout
                )
            except RedisError:
                reserved = True  # EG still refuses ids it has
            if not reserved:
                raise already_exists(alias)
        try:
            return await self._forward_counted(body, user)
        finally:
            if create_id:
                await self.drop_reservation(alias, create_id)

    async def drop_reservation(self, alias: str, create_id: str) -> None:
        """Give the client's id back unless the create bound it (its reservation would
        otherwise hold it for the claim lease)."""
        try:
            await self.aliases.drop_reservation(alias, create_id)
        except RedisError as e:
            self.log.warning("Reservation of kernel id %s left to expire: %s", alias, e)

    async def _forward_counted(self, body: bytes, user: str) -> Forwarded:
        """EG's answer to a cold create, its kernel counted against ``user`` when
        max_kernels_per_user is set (KernelRequestError 403 at the limit)."""
        if self.user_limit < 0:
            return await self._forward_create(body)
        # A cold kernel counts against its user from before EG is asked (so two replicas
        # cannot both let the user past the limit) until it is deleted through jkp or found
        # gone from EG by the handed-out check (EG's culler, a DELETE straight to EG).
        slots = self.pools.default.store.user_kernels
        token = f"create:{uuid.uuid4().hex}"
        lease = self.gateway.request_timeout + _COLD_SLOT_MARGIN
        try:
            await slots.take_cold(user, token, self.user_limit, lease)
        except UserLimitReached as e:
            raise refused(e) from None
        answer = None
        try:
            answer = await self._forward_create(body)
        finally:
            await self._settle_cold_slot(user, token, answer)
        return answer

    async def _forward_create(self, body: bytes) -> Forwarded:
        return await self.gateway.forward(
            "POST",
            "/api/kernels",
            body=with_env(body),
            headers={"Content-Type": "application/json"},
        )

    async def _settle_cold_slot(self, user: str, token: str, answer: Forwarded | None) -> None:
        """The cold create's slot becomes its kernel's, or is given back when EG started none.
        When Redis fails now the slot runs out with its lease: the kernel is not counted."""
        model = answer.json() if answer is not None and answer.status == 201 else None
        slots = self.pools.default.store.user_kernels
        try:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                await slots.confirm_cold(user, token, model["id"])
            else:
                await slots.release(user, token)
        except RedisError as e:
            self.log.warning("Slot of a cold create for %s left to run out: %s", user, e)

"""Requests that name a kernel: its client's id resolved through the aliases in Redis, the
request passed to EG, and the answer shown with the client's id."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any
from urllib.parse import quote

from redis.exceptions import RedisError

from jkp.services.gateway import Forwarded, GatewayClient, GatewayError
from jkp.services.kernels.eg_api import DOES_NOT_EXIST, KernelRequestError, shown_as
from jkp.services.pool.registry import PoolRegistry
from jkp.services.store.aliases import AliasStore, UnhandedKernel
from jkp.user import set_up_code

# How long a bound kernel may take to be bound again after a restart.
_REBIND_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class NamedKernels:
    """The kernels clients name by their ids, any replica's; ``user_limit`` is KernelService's
    max_kernels_per_user (-1: none)."""

    pools: PoolRegistry
    gateway: GatewayClient
    aliases: AliasStore
    user_limit: int
    log: logging.Logger | logging.LoggerAdapter

    async def forward(
        self,
        method: str,
        kernel_id: str,
        action: str = "",
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """A request for kernel ``kernel_id`` (``action``: "", "interrupt", "restart") passed
        to EG for the kernel it names; models in the answer show the client's id.

        A kernel EG no longer has, or that the client deleted, is forgotten; a restarted one
        is bound again (directory and env) before the answer.
        """
        binding = await self.binding(kernel_id)
        upstream = binding["kernel_id"] if binding else kernel_id
        path = f"/api/kernels/{quote(upstream)}" + (f"/{action}" if action else "")
        answer = await self.gateway.forward(method, path, query, body, headers)
        if binding is None:
            if answer.status == 404 or (method == "DELETE" and answer.status < 300):
                await self._forget_unbound(kernel_id)
            return answer
        if answer.status == 404 or (method == "DELETE" and answer.status < 300):
            await self._forget(kernel_id, binding)
        elif action == "restart" and answer.status < 300:
            await self._rebind(binding)
        model = answer.json()
        if not isinstance(model, dict) or model.get("id") != upstream:
            return answer
        return dataclasses.replace(answer, body=json.dumps(shown_as(model, kernel_id)).encode())

    async def binding(self, kernel_id: str) -> dict[str, Any] | None:
        """The binding of a client's kernel id; None for ids EG knows as they are (and when
        Redis cannot tell: a cold kernel still works then).

        KernelRequestError 404, as EG answers for a kernel it does not have, when the id is a
        pool's kernel not handed out (any replica's pool): no client may reach it.
        """
        try:
            return await self.aliases.binding(kernel_id)
        except UnhandedKernel:
            raise KernelRequestError(404, DOES_NOT_EXIST.format(kernel_id), "Not Found") from None
        except RedisError as e:
            self.log.warning(
                "Cannot resolve kernel %s in Redis (%s); passed as it is", kernel_id, e
            )
            return None

    async def upstream_id(self, kernel_id: str) -> str:
        """The id EG knows the client's kernel ``kernel_id`` by; KernelRequestError: see
        binding."""
        binding = await self.binding(kernel_id)
        return binding["kernel_id"] if binding else kernel_id

    async def _forget(self, alias: str, binding: dict[str, Any]) -> None:
        """Forget a bound kernel that is gone: its hand-out and its alias."""
        pool = self.pools.pools.get(binding.get("pool", ""))
        try:
            if pool is not None:
                await pool.store.forget_handed([binding["kernel_id"]])
            await self.aliases.forget(alias, binding["kernel_id"])
        except RedisError as e:
            self.log.warning("Could not forget kernel %s in Redis: %s", alias, e)

    async def _forget_unbound(self, kernel_id: str) -> None:
        """Give back the slot of a kernel that is gone, known to EG by its own id: a cold one,
        or one a pop handed out. Without max_kernels_per_user nothing is counted."""
        if self.user_limit < 0:
            return
        try:
            await self.pools.default.store.user_kernels.forget_cold([kernel_id])
            for pool in self.pools.pools.values():
                await pool.store.forget_handed([kernel_id])
        except RedisError as e:
            self.log.warning("Could not forget kernel %s in Redis: %s", kernel_id, e)

    async def _rebind(self, binding: dict[str, Any]) -> None:
        """Bind a restarted kernel again: a restart starts its process afresh, in the pool's
        directory and env. KernelRequestError when it cannot be."""
        pool = self.pools.pools.get(binding.get("pool", ""))
        if pool is None:
            return
        code = set_up_code(pool.working_dir, binding.get("working_dir"), env=binding.get("env"))
        try:
            await self.gateway.execute(binding["kernel_id"], code, _REBIND_TIMEOUT)
        except GatewayError as e:
            raise KernelRequestError(
                502,
                f"The kernel restarted, but its directory and env could not be set again: {e}",
                "Rebind failed",
            ) from e

    async def list_kernels(self, query: str = "") -> Forwarded:
        """EG's kernel list without the pools' own kernels (idle, starting, being handed
        out, retiring; of any replica's pools), each shown by the id its client knows it by."""
        answer = await self.gateway.forward("GET", "/api/kernels", query)
        models = answer.json()
        if answer.status != 200 or not isinstance(models, list):
            return answer
        try:
            hidden = await self.aliases.unhanded_ids()
            shown = await self.aliases.aliases_by_kernel()
        except RedisError as e:
            raise KernelRequestError(503, f"Redis unavailable: {e}", "Store unavailable") from e
        listed = [
            shown_as(m, shown.get(m.get("id"), m.get("id")))
            for m in models
            if isinstance(m, dict) and m.get("id") not in hidden
        ]
        return dataclasses.replace(answer, body=json.dumps(listed).encode())

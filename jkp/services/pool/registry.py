"""PoolRegistry: the warm pools of one jkp, one per kernel spec, built from ``pools``."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

from traitlets import TraitError
from traitlets.config import LoggingConfigurable

from jkp.errors import ApiError
from jkp.services.gateway import GatewayClient, GatewayError
from jkp.services.metrics import Metrics
from jkp.services.pool import spec
from jkp.services.pool.common import StartSlots
from jkp.services.pool.manager import PoolManager
from jkp.services.pool.sizing import check_bounds
from jkp.services.store import RedisStore
from jkp.traits import check_options

# A pool's size is its max_pending_kernels, its least min_pending_kernels; its name is its
# kernel_name.
_OPTION_TRAITS = {"size": "max_pending_kernels", "min": "min_pending_kernels"}


class UnknownPoolError(ApiError, LookupError):
    """No pool serves the kernel spec asked for."""

    status_code, reason = 400, "Unknown kernelName"


class PoolRegistry(LoggingConfigurable):
    """The pools of this replica by kernel spec name, and the one a pop without ``kernelName``
    takes from (the pool named by ``PoolManager.kernel_name``).

    Without ``pools`` there is one pool, named by ``PoolManager.kernel_name`` and sized by
    ``max_pending_kernels``, at ``RedisStore.key``: as the original service. Other pools keep
    their state at ``<RedisStore.key>:pool:<name>``. A pool's options override ``PoolManager``'s
    traits (config file, command line, ``JKP_*`` environment) for that pool only.
    """

    def __init__(
        self,
        pools: dict[str, dict[str, Any]],
        gateway: GatewayClient,
        store: RedisStore,
        metrics: Metrics,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.gateway = gateway
        self.metrics = metrics
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Read, not started: what the options say of the default pool and of the replica.
        default = PoolManager(parent=self.parent, log=self.log, gateway=gateway, store=store.pool())
        self.default_name = default.kernel_name
        # max_concurrent_starts bounds the replica's starts across all its pools.
        self.start_slots = StartSlots(default.max_concurrent_starts)
        settings = pools or {self.default_name: {}}
        if self.default_name not in settings:
            raise TraitError(
                f"pools: no pool named {self.default_name!r}, the default (PoolManager."
                f"kernel_name, JKP_KERNEL_NAME); pools are {sorted(settings)}"
            )
        self.pools: dict[str, PoolManager] = {}
        for name, options in settings.items():
            key = store.key if name == self.default_name else f"{store.key}:pool:{name}"
            self.pools[name] = self._pool(name, options, gateway, store.pool(key))

    def _pool(self, name: str, options: Any, gateway: GatewayClient, store: Any) -> PoolManager:
        """The PoolManager of pool ``name``; TraitError naming the pool and the option when an
        option is unknown or its value bad."""
        if not isinstance(options, dict):
            raise TraitError(f"pools[{name!r}] must be a dict of options, got {options!r}")
        known = set(PoolManager.class_trait_names(config=True)) - {"kernel_name"}
        overrides: dict[str, Any] = {}
        for option, value in options.items():
            trait_name = _OPTION_TRAITS.get(option, option)
            if trait_name not in known:
                raise TraitError(
                    f"pools[{name!r}]: unknown option {option!r}; options are 'size', 'min' "
                    f"and {', '.join(sorted(known - set(_OPTION_TRAITS.values())))}"
                )
            overrides[trait_name] = value
        try:
            return PoolManager(
                parent=self.parent,
                log=self.log,
                gateway=gateway,
                store=store,
                metrics=self.metrics.pool(name),
                replica_id=self.replica_id,
                start_slots=self.start_slots,
                kernel_name=name,
                **overrides,
            )
        except TraitError as e:
            raise TraitError(f"pools[{name!r}]: {e}") from None

    def get(self, name: str | None = None) -> PoolManager:
        """The pool serving kernel spec ``name`` (None: the default pool)."""
        pool = self.pools.get(self.default_name if name is None else name)
        if pool is None:
            raise UnknownPoolError(
                f"no pool serves kernel spec {name!r}; pools: {', '.join(sorted(self.pools))}"
            )
        return pool

    @property
    def default(self) -> PoolManager:
        """The pool a pop without kernelName takes from."""
        return self.pools[self.default_name]

    def check_config(self) -> None:
        """Read every option of every pool, so a bad value stops start-up now."""
        for name, pool in self.pools.items():
            where = f"pools[{name!r}]: " if len(self.pools) > 1 else ""
            check_options(pool, where)
            try:
                check_bounds(pool)
                spec.check_kernel_env(pool)
            except TraitError as e:
                raise TraitError(f"{where}{e}") from None

    async def check_kernel_specs(self) -> str | None:
        """Raise TraitError when a pool's kernel spec is not on EG. When EG cannot be reached,
        why the specs were not checked (the pools' starts will report it too)."""
        try:
            specs = await self.gateway.kernel_specs()
        except GatewayError as e:
            return f"Cannot check the pools' kernel specs on EG now: {e}"
        missing = sorted(set(self.pools) - set(specs))
        if missing:
            raise TraitError(
                f"pools {missing}: not kernel specs Enterprise Gateway has; it has {sorted(specs)}"
            )
        return None

    async def start(self) -> None:
        """Start every pool."""
        for pool in self.pools.values():
            await pool.start()

    async def close(self, timeout: float) -> None:
        """Refuse new pops; wait up to ``timeout`` seconds for those in flight."""
        await asyncio.gather(*(pool.close(timeout) for pool in self.pools.values()))

    async def stop(self) -> None:
        """Stop every pool's background work."""
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))

    async def status(self) -> dict[str, Any]:
        """The default pool's status, as before pools, and every pool's under ``pools``."""
        statuses = {name: await pool.status() for name, pool in self.pools.items()}
        return {**statuses[self.default_name], "pools": statuses}

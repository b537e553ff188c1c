"""Reporting: what /api/pool shows of a pool."""

from __future__ import annotations

from typing import Any

from jkp.services.pool.common import PoolPart, Shared
from jkp.services.pool.filling import Filler
from jkp.services.pool.sizing import Sizer


class Reporting(PoolPart):
    """A pool's state as Redis holds it, and as this replica sees it."""

    def __init__(self, shared: Shared, filler: Filler, sizer: Sizer):
        super().__init__(shared)
        self.filler = filler
        self.sizer = sizer

    async def status(self) -> dict[str, Any]:
        """This pool as Redis holds it, its bounds, target and the demand behind it, and what
        this replica saw failing last."""
        counts = await self.store.counts()
        target, _ = await self.sizer.targets()
        self.metrics.set_pool_counts(self.options.max_pending_kernels, counts)
        self.metrics.pool_target.set(target)
        demand = self.sizer.last.as_dict() if self.sizer.adaptive and self.sizer.last else None
        return {
            "replica": self.options.replica_id,
            "replicas": await self.store.live_replicas(),
            "kernel_name": self.options.kernel_name,
            "target": target,
            "min": self.sizer.minimum,
            "max": self.options.max_pending_kernels,
            "demand": demand,
            **counts,
            "waiting": await self.store.waiting(),
            "errors": dict(self.health.failing),
            "last_errors": list(self.health.last_errors),
            "start_error": self.filler.start_error,
        }

"""PoolOptions: what the parts of a pool read of its options, handed to each part as values.

PoolManager holds the options as traits (config, env, validation); once the start-up check
has read them it builds one PoolOptions, and its parts read that, not the manager: no part
imports it.
"""

from __future__ import annotations

import dataclasses
import functools

from jkp.services.pool import spec

_CLAIM_LEASE_MARGIN = 5.0


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """One pool's options as its parts use them (see PoolManager for what each means)."""

    kernel_name: str
    replica_id: str
    # What its kernels are started as (spec.kernel_start_env).
    kernel_user_name: str
    kernel_namespace: str
    kernel_image: str
    nfs_volume_server: str
    nfs_mount_path: str
    working_dir: str
    init_code: str
    # Its size.
    max_pending_kernels: int
    min_pending_kernels: int | None
    scale_down_delay: float
    refill_delay: float
    sizing_interval: float
    # Its timing.
    pop_timeout: float
    kernel_request_timeout: float
    kernel_ready_timeout: float
    activation_interval: float
    check_task_interval: float
    channel_sync_interval: float
    replica_heartbeat_interval: float
    max_kernel_age: float
    max_start_backoff: float
    max_concurrent_starts: int
    idempotency_ttl: float
    eg_request_timeout: float  # GatewayClient.request_timeout

    @classmethod
    def read(cls, source: object, **others: float) -> PoolOptions:
        """The options as ``source`` holds them now (PoolManager, whose traits bear these
        names), and ``others`` it does not hold."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in others]
        return cls(**{name: getattr(source, name) for name in names}, **others)

    @property
    def start_lease(self) -> float:
        """Longest a start can take: POST, the ready wait, then reporting it idle."""
        return self.kernel_ready_timeout + 2 * self.eg_request_timeout

    @property
    def claim_lease(self) -> float:
        """Longest a pop can hold a kernel: set-up, asking EG, and a margin for Redis."""
        return 3 * self.kernel_request_timeout + _CLAIM_LEASE_MARGIN

    def kernel_start_env(self, kernel_id: str) -> dict[str, str]:
        """The ``env`` of EG's start request for a pooled kernel with id ``kernel_id``."""
        return spec.kernel_start_env(self, kernel_id)

    @functools.cached_property
    def spec_fingerprint(self) -> str:
        """A hash of what the pool's kernels are started as: see spec.spec_fingerprint."""
        return spec.spec_fingerprint(self)

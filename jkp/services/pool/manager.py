"""PoolManager: one warm pool of kernels on EG for one kernel spec, its state in Redis.

The pool's work is done by its parts, each in a module of its own: ``HandingOut`` (pops, with
``Claiming`` and ``SettingUp``), ``Filler`` (the fill loop and starts), ``Keeper`` (reconcile,
websockets, activation), ``Replicas`` (heartbeat and takeover), ``Rebuilder`` (records Redis
lost, rebuilt from EG), ``Reporting`` (/api/pool); what they share is in ``common``. PoolManager
holds the options as traits and hands them to the parts as ``PoolOptions``; it wires the parts,
and is what the app and the handlers use.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from typing import Any

from traitlets import Instance, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from jkp.services.gateway import GatewayClient
from jkp.services.metrics import Metrics, PoolMetrics
from jkp.services.pool.common import Health, Registration, Retirer, Shared, StartSlots
from jkp.services.pool.filling import Filler
from jkp.services.pool.handing import HandingOut
from jkp.services.pool.keeping import Keeper
from jkp.services.pool.options import PoolOptions
from jkp.services.pool.rebuild import Rebuilder
from jkp.services.pool.replicas import Replicas
from jkp.services.pool.reporting import Reporting
from jkp.services.pool.sizing import Sizer
from jkp.services.store import PoolStore
from jkp.services.store.kernel_records import RecordStore
from jkp.services.waiting_pops import PooledNotices
from jkp.traits import EnvFloat, EnvInt, EnvUnicode

_STOP_RECANCEL_INTERVAL = 0.5
# A replica counts as dead once its heartbeat is this many intervals old.
_HEARTBEAT_TTL_INTERVALS = 3


class PoolManager(LoggingConfigurable):
    """A pool of idle kernels on EG for one kernel spec, its state kept in Redis.

    It keeps ``max_pending_kernels`` kernels idle (started and answering), hands one out per
    pop after moving it into the user's directory, refills after every pop and every
    ``check_task_interval``, and pings idle kernels every ``activation_interval`` so EG's
    idle culler leaves them alone. It owns its background tasks: ``start()`` and ``stop()``.
    """

    gateway = Instance(GatewayClient)
    store = Instance(PoolStore)
    metrics = Instance(PoolMetrics)
    start_slots = Instance(StartSlots)
    replica_id = Unicode(help="This replica's id: host, process and a random part")

    @default("metrics")
    def _metrics_default(self) -> PoolMetrics:
        return Metrics().pool(self.kernel_name)

    @default("start_slots")
    def _start_slots_default(self) -> StartSlots:
        return StartSlots(self.max_concurrent_starts)

    @default("replica_id")
    def _replica_id_default(self) -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    max_pending_kernels = EnvInt(
        10,
        env="JKP_MAX_PENDING_KERNELS",
        help="Idle kernels kept ready: the most, when min_pending_kernels is set",
        min=0,
    ).tag(config=True)

    min_pending_kernels = EnvInt(
        None,
        allow_none=True,
        env="JKP_MIN_PENDING_KERNELS",
        help=(
            "The least idle kernels kept ready; between it and max_pending_kernels the pool "
            "follows its demand (see docs/sizing.md). Unset: equal to max_pending_kernels, a "
            "pool of fixed size"
        ),
        min=0,
    ).tag(config=True)

    scale_down_delay = EnvFloat(
        600.0,
        env="JKP_SCALE_DOWN_DELAY",
        help=(
            "Seconds of lower demand before a pool sized by demand retires its surplus idle "
            "kernels (oldest first, never below min_pending_kernels)"
        ),
        min=1,
    ).tag(config=True)

    sizing_interval = EnvFloat(
        1.0,
        env="JKP_SIZING_INTERVAL",
        help=(
            "Seconds: how often a pool sized by demand reads its demand, and the width of the "
            "time buckets its arrivals are counted in (the same on every replica of the pool)"
        ),
        min=0.001,
    ).tag(config=True)

    kernel_name = EnvUnicode(
        "python_kubernetes", env="JKP_KERNEL_NAME", help="EG kernel spec of pooled kernels"
    ).tag(config=True)

    kernel_image = EnvUnicode(
        "elyra/kernel-py:3.2.2",
        env="JKP_KERNEL_IMAGE",
        help="Kernel pod image, sent as KERNEL_IMAGE",
    ).tag(config=True)

    kernel_namespace = EnvUnicode(
        "tablegpt-kernels",
        env="JKP_KERNEL_NAMESPACE",
        help="Kubernetes namespace of kernel pods, sent as KERNEL_NAMESPACE",
    ).tag(config=True)

    kernel_user_name = EnvUnicode(
        "jovyan",
        env="JKP_KERNEL_USER_NAME",
        help="Sent as KERNEL_USERNAME; EG refuses kernels for root and names pods after it",
    ).tag(config=True)

    nfs_volume_server = EnvUnicode(
        "10.0.0.29",
        env="JKP_NFS_VOLUME_SERVER",
        help="NFS server of the shared volume mounted into kernel pods; empty: no volume",
    ).tag(config=True)

    nfs_mount_path = EnvUnicode(
        "/data/tablegpt-test/shared/",
        env="JKP_NFS_MOUNT_PATH",
        help="Path exported by the NFS server",
    ).tag(config=True)

    working_dir = EnvUnicode(
        "/mnt/shared/",
        env="JKP_WORKING_DIR",
        help=("Where the share is mounted in the kernel; users' directories are made under it"),
    ).tag(config=True)

    @validate("working_dir")
    def _working_dir_validate(self, proposal: Any) -> str:
        if not proposal["value"].startswith("/"):
            raise TraitError(f"working_dir must be an absolute path, got {proposal['value']!r}")
        return proposal["value"]

    activation_interval = EnvFloat(
        1200.0,
        env="JKP_ACTIVATION_INTERVAL",
        help="Seconds between keep-alive pings of idle kernels; 0 disables them",
        min=0,
    ).tag(config=True)

    check_task_interval = EnvFloat(
        120.0,
        env="JKP_CHECK_TASK_INTERVAL",
        help="Seconds between checks that the pool is full and its kernels alive",
        min=0.1,
    ).tag(config=True)

    pop_timeout = EnvFloat(
        10.0,
        env="JKP_POP_TIMEOUT",
        help=(
            "Seconds a pop may take in all: waiting for a kernel when the pool is empty, "
            "and setting kernels up; past it the pop answers 503"
        ),
        min=0.1,
    ).tag(config=True)

    init_code = EnvUnicode(
        "",
        env="JKP_INIT_CODE",
        help="Python run in each new kernel after its warm-up, before it is pooled, to preload "
        "what its users import anyway (e.g. 'import pandas as pd'); unlike the warm-up, what "
        "it defines stays. A kernel whose init_code fails is shut down as a failed start",
    ).tag(config=True)

    max_kernel_age = EnvFloat(
        0.0,
        env="JKP_MAX_KERNEL_AGE",
        help="Seconds after which an idle kernel is replaced by a new one, a few at a time, "
        "the pool never below its size; 0: never",
        min=0,
    ).tag(config=True)

    idempotency_ttl = EnvFloat(
        600.0,
        env="JKP_IDEMPOTENCY_TTL",
        help=(
            "Seconds a pop sent with an Idempotency-Key is remembered: repeating it "
            "within that time answers the same kernel again"
        ),
        min=1,
    ).tag(config=True)

    replica_heartbeat_interval = EnvFloat(
        2.0,
        env="JKP_REPLICA_HEARTBEAT_INTERVAL",
        help=(
            "Seconds between this replica's heartbeats in Redis. A replica whose "
            "heartbeat is 3 intervals old counts as dead: another takes over the kernels "
            "it was starting and handing out, and it stops starting and handing out "
            "itself until it has registered again"
        ),
        min=0.1,
    ).tag(config=True)

    kernel_ready_timeout = EnvFloat(
        300.0,
        env="JKP_KERNEL_READY_TIMEOUT",
        help=(
            "Seconds a new kernel has to answer its first kernel_info_request before it "
            "is shut down and started again"
        ),
        min=1,
    ).tag(config=True)

    kernel_request_timeout = EnvFloat(
        2.0,
        env="JKP_KERNEL_REQUEST_TIMEOUT",
        help=(
            "Seconds EG and a kernel have to answer each request of a pop, a start check "
            "or an activation. A set-up that times out is then judged by asking EG (in "
            "the last quarter of this time, at most 0.5 s): a kernel EG still has is shut "
            "down and the pop takes the next; when EG does not answer either, the kernel "
            "goes back to the pool and the pop answers 503"
        ),
        min=0.1,
    ).tag(config=True)

    max_concurrent_starts = EnvInt(
        4,
        env="JKP_MAX_CONCURRENT_STARTS",
        help="Kernels this replica starts on EG at the same time",
        min=1,
    ).tag(config=True)

    channel_sync_interval = EnvFloat(
        5.0,
        env="JKP_CHANNEL_SYNC_INTERVAL",
        help=(
            "Seconds between syncs of this replica's websockets with the idle list: it "
            "opens one to each kernel another replica pooled, and closes those to kernels "
            "handed out through another replica; 0 leaves that to the check every "
            "check_task_interval"
        ),
        min=0,
    ).tag(config=True)

    refill_delay = EnvFloat(
        1.0,
        env="JKP_REFILL_DELAY",
        help=(
            "Seconds after a pop before its replacement kernel is started, so that a "
            "burst of pops is served before kernel starts load EG (and, on a small "
            "machine, the CPU); a pop waiting on an empty pool starts one at once"
        ),
        min=0,
    ).tag(config=True)

    max_start_backoff = EnvFloat(
        60.0,
        env="JKP_MAX_START_BACKOFF",
        help="Upper bound in seconds of the pause between failed kernel starts",
        min=0,
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.health = Health(self.log, self.metrics)
        self.retirer = Retirer(self.log, self.gateway, self.store, self.metrics, self.health)
        self.registration = Registration(_HEARTBEAT_TTL_INTERVALS * self.replica_heartbeat_interval)
        shared = Shared(
            self.log,
            lambda: self.options,
            self.store,
            self.gateway,
            self.metrics,
            self.health,
            self.retirer,
            self.registration,
            RecordStore(self.store.client, self.store.keys),
        )
        self.sizer = Sizer(self.store, self)
        self.filler = Filler(
            shared, start_slots=self.start_slots, check=self.reconcile, sizer=self.sizer
        )
        self.keeper = Keeper(shared, filler=self.filler)
        self.handing = HandingOut(shared, filler=self.filler, sizer=self.sizer)
        self.replicas = Replicas(shared, filler=self.filler)
        self.rebuilder = Rebuilder(shared, filler=self.filler)
        self.reporting = Reporting(shared, filler=self.filler, sizer=self.sizer)
        # Kernels any replica pools wake this replica's waiting pops.
        self.pooled_notices = PooledNotices(
            self.store.client, self.store.keys.pooled, self.filler.kernel_was_pooled, parent=self
        )

    @functools.cached_property
    def options(self) -> PoolOptions:
        """The options as the parts read them, read on first use (after the start-up check)."""
        return PoolOptions.read(self, eg_request_timeout=self.gateway.request_timeout)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this replica in Redis, then start the background work: heartbeat and
        takeover, reconcile with EG, fill, check, activate, sync."""
        await self.replicas.start()
        self.pooled_notices.start()
        self.filler.start()
        self.keeper.start()
        self.rebuilder.start()

    async def stop(self) -> None:
        """Stop the background work; kernels being started are shut down, the pool stays."""
        parts = (self.replicas, self.filler, self.keeper, self.rebuilder, self.pooled_notices)
        for part in parts:
            part.stop()
        # redis-py can swallow a cancellation that lands inside one of its calls: cancel again
        # until every task has really ended (the loops also check that they are stopping).
        while pending := [t for part in parts for t in part.tasks() if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_STOP_RECANCEL_INTERVAL)
        # Shutdowns already under way are allowed to finish so no kernel is left behind.
        await self.retirer.wait()
        await self.pooled_notices.close()
        await self.replicas.leave()

    async def close(self, timeout: float) -> None:
        """Refuse new pops and wait up to ``timeout`` seconds for those in flight."""
        await self.handing.close(timeout)

    async def pop(
        self,
        user_id: str,
        idempotency_key: str | None = None,
        client_gone: asyncio.Event | None = None,
        env: dict[str, str] | None = None,
        timings: dict[str, float] | None = None,
        user_limit: int = -1,
    ) -> dict[str, Any]:
        """Hand one idle kernel to ``user_id``, in its directory; see HandingOut.pop."""
        return await self.handing.pop(
            user_id, idempotency_key, client_gone, env, timings, user_limit
        )

    async def bind(self, **kwargs: Any) -> dict[str, Any]:
        """Serve a gateway create warm; see HandingOut.bind."""
        return await self.handing.bind(**kwargs)

    async def take_back(self, kernel_id: str, reason: str) -> None:
        """Shut down a kernel just handed out whose hand-out must not stand (its alias goes
        with it)."""
        if await self.store.retire_handed(kernel_id):
            self.retirer.retire_soon(kernel_id, reason)

    async def reconcile(self) -> None:
        """Make Redis and EG agree; see Keeper.reconcile."""
        await self.keeper.reconcile()

    @property
    def registered(self) -> bool:
        """Whether this replica may start and hand out kernels (its heartbeat surely lasts)."""
        return self.registration.registered

    # -- what a start request sends -------------------------------------------------------

    def kernel_start_env(self, kernel_id: str) -> dict[str, str]:
        """The ``env`` of EG's start request for a pooled kernel with id ``kernel_id``."""
        return self.options.kernel_start_env(kernel_id)

    @functools.cached_property
    def spec_fingerprint(self) -> str:
        """A hash of what the pool's kernels are started as (kernel spec, start env,
        init_code): a kernel of another fingerprint is never handed out by this replica."""
        return self.options.spec_fingerprint

    # -- state reporting ----------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """This pool as Redis holds it, for /api/pool; see Reporting.status."""
        return await self.reporting.status()

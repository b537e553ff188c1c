"""PoolManager: keeps warm kernels on EG, hands them out, refills and keeps them alive."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from redis.exceptions import RedisError
from traitlets import Instance, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from jkp.services.gateway import GatewayClient, GatewayError, KernelReplyError
from jkp.services.handout import (
    Handout,
    PoolEmptyError,
    PopAbandonedError,
    ReplicaUnregisteredError,
    SetUpError,
    SetUpGuard,
    ShuttingDownError,
    UserDirectoryError,
)
from jkp.services.metrics import Metrics, PoolMetrics
from jkp.services.store import Claim, Idempotency, IdempotencyPending, PoolStore, Replay
from jkp.traits import EnvFloat, EnvInt, EnvUnicode
from jkp.user import (
    USER_DIR_REFUSED,
    WARM_UP_CODE,
    enter_user_dir_code,
    set_up_not_begun_expression,
    validate_user_id,
)

# How often a pop waiting on an empty pool looks again for a kernel another replica pooled.
_EMPTY_POOL_POLL = 0.1
_START_BACKOFF_BASE = 1.0
# How long each try of a new kernel's first kernel_info_request lasts.
_READY_RETRY_INTERVAL = 3.0
_IDLE_REPORT_ATTEMPTS = 6
_IDLE_REPORT_PAUSE = 0.05
# What EG refuses in a KERNEL_* value (it would answer 400 to every start).
_KERNEL_ENV_FORBIDDEN = ("$", "`", "\n", "\r")
_KERNEL_ENV_MAX_LENGTH = 4096
_STOP_RECANCEL_INTERVAL = 0.5
_CLAIM_LEASE_MARGIN = 5.0
_LAST_ERRORS_KEPT = 10
# A replica's activation turn lasts this share of the interval, so the next sweep is not skipped.
_ACTIVATION_TURN_SHARE = 0.8
# Pause of the background loops while Redis or EG fail: doubles from the first, up to the cap.
_FAILING_RETRY_FIRST = 0.5
_FAILING_RETRY_CAP = 10.0
# jkp's fields in a pooled kernel's stored model: its spec fingerprint, when it was pooled.
_SPEC_FIELD = "jkp_spec"
_POOLED_AT_FIELD = "jkp_pooled_at"
# Kernels replaced at once for their age.
_RECYCLE_AT_ONCE = 2
# A replica counts as dead once its heartbeat is this many intervals old.
_HEARTBEAT_TTL_INTERVALS = 3
# Of a set-up's time, the share (up to a cap) kept back to ask EG whose fault a timeout was.
_VERDICT_TIME_SHARE = 0.25
_VERDICT_TIME_MAX = 0.5
# Requests to EG a background sweep (websocket opens, activation, checks) has in flight at once.
_CHECKS_AT_ONCE = 8
# Handed-out kernels read from Redis per page of their check.
_HANDED_PAGE = 100
# Failed starts in a row after which an empty pool makes the replica not ready.
_STARTS_FAILING = 2


T = TypeVar("T")


class InitCodeError(GatewayError):
    """A new kernel failed its pool's init_code."""


class StartSlots:
    """The kernel starts this replica runs at once, across all its pools.

    ``max_concurrent_starts`` bounds a replica, not a pool: EG and the machine carry the starts
    of every pool. A pool whose start ends frees a slot for all, so all their fillers wake.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._wakers: list[Callable[[], None]] = []

    def register(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever a slot comes free."""
        self._wakers.append(wake)

    @property
    def free(self) -> bool:
        return self.used < self.limit

    def take(self) -> None:
        self.used += 1

    def give_back(self) -> None:
        self.used -= 1
        for wake in self._wakers:
            wake()


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
        10, env="JKP_MAX_PENDING_KERNELS", help="Idle kernels kept ready", min=0
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
        self._tasks: dict[str, asyncio.Task] = {}
        self._starts: dict[str, asyncio.Task] = {}  # by kernel id
        self._retirements: set[asyncio.Task] = set()
        self._wake_filler = asyncio.Event()
        # Replaced each time a kernel is pooled, so every waiter on the old one wakes.
        self._kernel_pooled = asyncio.Event()
        self._stopping = False
        self._closing = False
        self._active_pops = 0
        self._no_active_pops = asyncio.Event()
        self._last_errors: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_LAST_ERRORS_KEPT
        )
        self._start_failures = 0
        self._last_start_error = ""
        self._next_start_at = 0.0
        # Set by the first pop after the pool was last topped up: no start before then.
        self._refill_at: float | None = None
        self._failing: dict[str, str] = {}
        self._set_up_guard = SetUpGuard()
        self._init_code_failing = False
        # Kernels being replaced for their age: the target is raised by as many.
        self._recycling = 0
        self.start_slots.register(self._wake_filler.set)
        # Until when (event loop time) this replica's heartbeat in Redis surely lasts.
        self._registered_until = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this replica in Redis, then start the background tasks: heartbeat and
        takeover, reconcile with EG, fill, check, activate, sync."""
        try:
            await self._beat()
        except RedisError:
            pass  # the heartbeat loop tries again at once, and reports it
        self._tasks["heartbeat"] = asyncio.create_task(self._heartbeat_loop(), name="jkp-heartbeat")
        self._tasks["fill"] = asyncio.create_task(self._fill_loop(), name="jkp-fill")
        if self.channel_sync_interval > 0:
            self._tasks["channels"] = asyncio.create_task(
                self._channel_sync_loop(), name="jkp-channels"
            )
        if self.activation_interval > 0:
            self._tasks["activate"] = asyncio.create_task(
                self._activation_loop(), name="jkp-activate"
            )

    async def stop(self) -> None:
        """Stop the background tasks; kernels being started are shut down, the pool stays."""
        self._stopping = True
        # redis-py can swallow a cancellation that lands inside one of its calls: cancel again
        # until every task has really ended (the loops also check _stopping).
        while pending := [
            t for t in (*self._tasks.values(), *self._starts.values()) if not t.done()
        ]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_STOP_RECANCEL_INTERVAL)
        self._tasks.clear()
        # Shutdowns already under way are allowed to finish so no kernel is left behind.
        await asyncio.gather(*self._retirements, return_exceptions=True)
        try:
            await self.store.leave(self.replica_id)  # nothing of ours is left to take over
        except RedisError as e:
            self.log.warning("Could not withdraw this replica's heartbeat (it expires): %s", e)

    def refill(self) -> None:
        """Ask the fill loop to top the pool up now."""
        self._refill_at = None
        self._wake_filler.set()

    def _refill_later(self) -> None:
        """A pop took a kernel: top the pool up ``refill_delay`` after the burst's first pop.

        The delay is fixed, not pushed back by later pops, so a steady stream of pops cannot
        hold refills off for longer.
        """
        if self._refill_at is None:
            self._refill_at = asyncio.get_running_loop().time() + self.refill_delay
        self._wake_filler.set()

    # -- what a start request sends -------------------------------------------------------

    def kernel_start_env(self, kernel_id: str) -> dict[str, str]:
        """The ``env`` of EG's start request for a pooled kernel with id ``kernel_id``."""
        env = {
            "KERNEL_ID": kernel_id,
            "KERNEL_USERNAME": self.kernel_user_name,
            "KERNEL_NAMESPACE": self.kernel_namespace,
            "KERNEL_IMAGE": self.kernel_image,
            "KERNEL_WORKING_DIR": self.working_dir,
        }
        if self.nfs_volume_server:
            env["KERNEL_VOLUMES"] = json.dumps(
                [
                    {
                        "name": "shared-vol",
                        "nfs": {"server": self.nfs_volume_server, "path": self.nfs_mount_path},
                    }
                ]
            )
            env["KERNEL_VOLUME_MOUNTS"] = json.dumps(
                [{"name": "shared-vol", "mountPath": self.working_dir}]
            )
        return env

    @property
    def spec_fingerprint(self) -> str:
        """What the pool's kernels are started as (kernel spec, start env, init_code), hashed:
        a kernel of another fingerprint is never handed out by this replica."""
        env = self.kernel_start_env("")
        env.pop("KERNEL_ID")
        spec = {"kernel_name": self.kernel_name, "env": env, "init_code": self.init_code}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def check_kernel_env(self) -> None:
        """Refuse at start-up the KERNEL_* values EG would refuse with 400 at every start."""
        for name, value in self.kernel_start_env(str(uuid.uuid4())).items():
            bad = next((c for c in _KERNEL_ENV_FORBIDDEN if c in value), None)
            if bad is not None or len(value) > _KERNEL_ENV_MAX_LENGTH:
                why = f"contains {bad!r}" if bad else f"is over {_KERNEL_ENV_MAX_LENGTH} characters"
                raise TraitError(
                    f"{name} {why}, which Enterprise Gateway refuses; check the PoolManager "
                    "options it comes from"
                )

    # -- pop --------------------------------------------------------------------------------

    async def pop(
        self,
        user_id: str,
        idempotency_key: str | None = None,
        client_gone: asyncio.Event | None = None,
    ) -> dict[str, Any]:
        """Hand one idle kernel to ``user_id``, in ``<working_dir>/<user_id>``; its EG model.

        Everything it waits on shares one deadline, ``pop_timeout``. With ``idempotency_key``,
        a pop that repeats an earlier one of the same user gets that pop's model again. When
        ``client_gone`` is set (the caller hung up), the pop stops at its next step and the
        kernel goes back to the pool, or is shut down once its set-up has begun.

        Raises PoolEmptyError when no kernel is ready in time, GatewayError when EG fails (the
        kernel taken goes back to the pool), RedisError when Redis does, UserDirectoryError when
        the user's directory is refused, SetUpError when the share fails, SetUpPausedError after
        several such failures in a row, IdempotencyConflict, PopAbandonedError, and
        ShuttingDownError once ``close()`` was called. InvalidUserId, before anything else,
        when ``user_id`` is not one safe path segment (that is not a pop: it is not counted).
        """
        user_id = validate_user_id(user_id)
        loop = asyncio.get_running_loop()
        started, outcome = loop.time(), "error"
        self._active_pops += 1
        try:
            if self._closing:
                raise ShuttingDownError("jkp is shutting down")
            handout = Handout(
                user_id=user_id,
                deadline=started + self.pop_timeout,
                client_gone=client_gone or asyncio.Event(),
                idempotency=(
                    None
                    if idempotency_key is None
                    else Idempotency(idempotency_key, uuid.uuid4().hex)
                ),
            )
            model, outcome = await self._pop(handout)
            return model
        except PoolEmptyError:
            outcome = "pool_empty"
            raise
        except PopAbandonedError:
            outcome = "abandoned"
            raise
        except (RedisError, GatewayError) as e:
            self._count_error(e)
            raise
        finally:
            self.metrics.pops.labels(outcome).inc()
            self.metrics.pop_duration.labels(outcome).observe(loop.time() - started)
            self._active_pops -= 1
            if not self._active_pops:
                self._no_active_pops.set()

    async def close(self, timeout: float) -> None:
        """Refuse new pops and wait up to ``timeout`` seconds for those in flight."""
        self._closing = True
        if self._active_pops:
            self._no_active_pops.clear()
            try:
                await asyncio.wait_for(self._no_active_pops.wait(), timeout)
            except TimeoutError:
                self.log.warning("%d pops still running after %gs", self._active_pops, timeout)

    async def _pop(self, handout: Handout) -> tuple[dict[str, Any], str]:
        """Claim kernels until one is set up for the user; its model and the pop's outcome."""
        if not self.registered:
            raise ReplicaUnregisteredError(
                "this replica's heartbeat in Redis ran out; it hands nothing out until it has "
                "registered again"
            )
        self._set_up_guard.check()
        while True:
            if handout.remaining() <= 0:
                raise PoolEmptyError(f"no kernel could be set up within {self.pop_timeout:g}s")
            claim = await self._claim(handout)
            if isinstance(claim, Replay):
                self.log.info("Pop repeated with its Idempotency-Key: kernel %s", claim.model["id"])
                return claim.model, "repeated"
            self._refill_later()
            if handout.client_gone.is_set():
                await self.store.release(claim)  # its set-up had not begun: the pool keeps it
                handout.check_client()
            model = await self._set_up(claim, handout)
            if model is None:
                continue  # that kernel is gone or hung: the next one
            if handout.client_gone.is_set():
                if await self.store.retire_claim(claim):
                    self._retire_soon(claim.kernel_id, "caller left during its set-up")
                handout.check_client()
            ttl = self.idempotency_ttl
            if await self.store.hand_over(claim, handout.user_id, model, ttl):
                # Its set-up closed the websocket it used; a reconcile or activation running
                # beside the pop may have opened another: a handed-out kernel keeps none.
                self.gateway.close_channel(claim.kernel_id)
                if handout.client_gone.is_set() and await self.store.retire_handed(claim.kernel_id):
                    self._retire_soon(claim.kernel_id, "caller left during its hand-over")
                    # A retry with the key must not be answered with a kernel being shut down.
                    await self.store.forget_idempotency(claim)
                    handout.check_client()
                self.log.info("Kernel %s handed to user %s", claim.kernel_id, handout.user_id)
                return model, "served"
            # Our claim was taken back by a reconcile while we worked: never hand that out.
            self.log.warning("Claim on kernel %s expired during set-up", claim.kernel_id)

    async def _claim(self, handout: Handout) -> Claim | Replay:
        """The next idle kernel for this pop (or an earlier pop's answer to replay); waits for
        one, up to the pop's deadline, while the pool is empty."""
        while True:
            handout.check_client()
            try:
                claim = await self.store.claim(
                    handout.user_id,
                    handout.idempotency,
                    self._claim_lease,
                    self.replica_id,
                    self.spec_fingerprint,
                )
            except IdempotencyPending:
                claim = None  # the pop holding the key answers soon, or gives it up
            else:
                if claim is not None:
                    return claim
                self.refill()  # a user is waiting: start a kernel now
            remaining = handout.remaining()
            if remaining <= 0:
                raise PoolEmptyError(f"no idle kernel within {self.pop_timeout:g}s")
            await self._wait_for_kernel(min(remaining, _EMPTY_POOL_POLL))

    async def _set_up(self, claim: Claim, handout: Handout) -> dict[str, Any] | None:
        """Move a claimed kernel into the user's dir; its model, or None to take the next one.

        The model is the one EG reported when the kernel was pooled, with ``execution_state``
        and ``last_activity`` as the kernel itself reported them at the end of the set-up, and
        ``connections`` not counting jkp's own websockets: asking EG again would add a round
        trip to every pop.

        Who is at fault decides what becomes of the kernel. A kernel that EG still has but that
        did not answer in time, or that EG no longer has, is retired and None returned. When EG
        itself fails, the kernel goes back to the pool and GatewayError is raised. A refused
        user directory leaves the kernel untouched: it goes back and UserDirectoryError is
        raised. Any other error of the set-up is the share's: the kernel is shut down and
        SetUpError raised at once, rather than spending the pool on a broken share.
        """
        kernel_id = claim.kernel_id
        code = enter_user_dir_code(self.working_dir, handout.user_id)
        # Part of the time is kept back for asking EG whose fault a timeout was.
        budget = handout.timeout(self.kernel_request_timeout)
        verdict_time = min(_VERDICT_TIME_MAX, budget * _VERDICT_TIME_SHARE)
        try:
            reply = await self.gateway.execute(kernel_id, code, budget - verdict_time)
        except KernelReplyError as e:
            if e.content.get("ename") == USER_DIR_REFUSED:
                await self.store.release(claim)
                raise UserDirectoryError(str(e.content.get("evalue", e))) from e
            self.log.error("Kernel %s failed set-up for user %s: %s", kernel_id, handout.user_id, e)
            if await self.store.retire_claim(claim):
                self._retire_soon(kernel_id, "failed set-up")
            self._set_up_guard.failed(e)
            raise SetUpError(str(e)) from e
        except GatewayError as e:
            return await self._set_up_failed(claim, e, handout.timeout(verdict_time))
        self._set_up_guard.succeeded()
        # jkp's own fields stay in Redis; the caller gets EG's model.
        model = {k: v for k, v in claim.model.items() if k not in (_SPEC_FIELD, _POOLED_AT_FIELD)}
        model["execution_state"] = "idle"
        if reply.idle_at:
            model["last_activity"] = reply.idle_at
        # EG counted jkp's own websockets when the kernel was pooled; they close as it is handed
        # out (another replica's at its next sync), and nobody else has been given its id.
        model["connections"] = 0
        return model

    async def _set_up_failed(self, claim: Claim, error: GatewayError, timeout: float) -> None:
        """Ask EG whether the kernel or EG failed the set-up, and deal with the kernel.

        No liveness check comes before a set-up, as it would cost EG and jkp a request per pop:
        only a failed one asks, in the time kept back for it.
        """
        kernel_id = claim.kernel_id
        self.gateway.close_channel(kernel_id)
        gone = error.status == 404
        if not gone:
            try:
                gone = await self.gateway.get_kernel(kernel_id, timeout) is None
            except GatewayError:
                # EG is down or erroring: the kernel is not at fault, keep it for the next pop.
                await self.store.release(claim)
                raise error from None
        if gone:
            self.log.info("Kernel %s is gone from EG; taking the next", kernel_id)
            if await self.store.retire_claim(claim):
                await self.store.forget_retired(kernel_id)
        else:
            self.log.warning(
                "Kernel %s did not answer its set-up (%s); shutting it down, taking the next",
                kernel_id,
                error,
            )
            if await self.store.retire_claim(claim):
                self._retire_soon(kernel_id, "did not answer its set-up")

    async def _wait_for_kernel(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._kernel_pooled.wait(), timeout)
        except TimeoutError:
            pass

    # -- filling ----------------------------------------------------------------------------

    async def _fill_loop(self) -> None:
        """Reconcile, then keep the pool at target; wakes on refill() and every check interval."""
        loop = asyncio.get_running_loop()
        next_check = 0.0
        failed_rounds = 0
        while not self._stopping:
            self._wake_filler.clear()
            try:
                if loop.time() >= next_check:
                    await self.reconcile()
                    next_check = loop.time() + self.check_task_interval
                    self._recovered("gateway")
                await self._start_missing()
                self._recovered("redis")
            except RedisError as e:
                self._failed("redis", e)
            except GatewayError as e:
                self._failed("gateway", e)
            now = loop.time()
            delay = next_check - now
            for start_at in (self._next_start_at, self._refill_at):
                if start_at is not None and start_at > now:
                    delay = min(delay, start_at - now)
            if self._failing:
                failed_rounds += 1
                delay = min(
                    delay, _FAILING_RETRY_FIRST * 2 ** (failed_rounds - 1), _FAILING_RETRY_CAP
                )
            else:
                failed_rounds = 0
            try:
                await asyncio.wait_for(self._wake_filler.wait(), max(delay, 0.01))
            except TimeoutError:
                pass

    def _start_backoff(self) -> float:
        """Pause before the next start after ``_start_failures`` failures in a row."""
        return min(self.max_start_backoff, _START_BACKOFF_BASE * 2 ** (self._start_failures - 1))

    @property
    def _start_lease(self) -> float:
        """Longest a start can take: POST, the ready wait, then reporting it idle."""
        return self.kernel_ready_timeout + 2 * self.gateway.request_timeout

    @property
    def _claim_lease(self) -> float:
        """Longest a pop can hold a kernel: GET, set-up, GET, and a margin for Redis."""
        return 3 * self.kernel_request_timeout + _CLAIM_LEASE_MARGIN

    async def _start_missing(self) -> None:
        """Start kernels while the pool (idle + starting, across replicas) is below target."""
        now = asyncio.get_running_loop().time()
        if now < self._next_start_at:
            return
        if self._refill_at is not None:
            if now < self._refill_at:
                return
            self._refill_at = None
        while not self._stopping and self.registered and self.start_slots.free:
            kernel_id = str(uuid.uuid4())
            if not await self.store.reserve_start(
                kernel_id,
                self.max_pending_kernels + self._recycling,
                self._start_lease,
                self.replica_id,
                self.spec_fingerprint,
            ):
                return
            self._track_start(kernel_id, self._start_kernel(kernel_id))
            if self._start_failures:
                return  # after failures, try one at a time until one succeeds

    def _track_start(self, kernel_id: str, start: Coroutine[Any, Any, None]) -> None:
        """Run a start in a task stop() cancels, counted against max_concurrent_starts."""
        task = asyncio.create_task(start, name=f"jkp-start-{kernel_id}")
        self._starts[kernel_id] = task
        self.start_slots.take()

        def done(_: asyncio.Task) -> None:
            self._starts.pop(kernel_id, None)
            self.start_slots.give_back()

        task.add_done_callback(done)

    async def _start_kernel(self, kernel_id: str) -> None:
        """Start one kernel (its id already leased in Redis) and pool it once it answers."""
        started = asyncio.get_running_loop().time()
        # Until EG answered the start request, a kernel may still appear after we give up on
        # it: shutting it down then could come too early (404) and leak it. Such a kernel keeps
        # its lease instead, and whichever replica reconciles after the lease expires removes it.
        requested = False
        try:
            await self.gateway.start_kernel(self.kernel_name, self.kernel_start_env(kernel_id))
            requested = True
            self.log.info("Kernel %s started on EG", kernel_id)
            if not await self._pool_when_ready(kernel_id):
                return
        except asyncio.CancelledError:
            if requested:
                self._abandon_start_soon(kernel_id, "jkp is stopping")
            else:
                self._keep_lease(kernel_id, "jkp stopped during its start request")
            raise
        except (GatewayError, RedisError) as e:
            self.metrics.kernel_starts.labels("failed").inc()
            self._count_error(e)
            self._start_failures += 1
            self._last_start_error = str(e)
            backoff = self._start_backoff()
            self._next_start_at = asyncio.get_running_loop().time() + backoff
            # A failing init_code is logged once (see _run_init_code), not once per kernel.
            log = self.log.debug if isinstance(e, InitCodeError) else self.log.error
            log(
                "Starting kernel %s failed (%d in a row; next try in %.0fs): %s",
                kernel_id,
                self._start_failures,
                backoff,
                e,
            )
            if requested or not (isinstance(e, GatewayError) and e.outcome_unknown):
                # Shielded: stop() cancels until its tasks end, and a half-done abandon would
                # leave the kernel in the retiring set, running on EG.
                await asyncio.shield(self._abandon_start_soon(kernel_id, "start failed"))
            else:
                self._keep_lease(kernel_id, "its start request got no answer")
            return
        finally:
            self._wake_filler.set()  # a start slot is free
        self._start_failures = 0
        self._last_start_error = ""
        self._next_start_at = 0.0
        self.metrics.kernel_starts.labels("ready").inc()
        self.metrics.start_duration.observe(asyncio.get_running_loop().time() - started)
        self.log.info("Kernel %s is ready and pooled", kernel_id)

    async def _pool_when_ready(self, kernel_id: str) -> bool:
        """Wait until a started kernel answers, warm it up and pool it.

        False when it is not this replica's to pool any more: its lease expired (the kernel is
        then shut down), or another replica took the start over (it pools the kernel).
        """
        await self._wait_until_ready(kernel_id)
        await self.gateway.execute(
            kernel_id, WARM_UP_CODE, self.kernel_request_timeout, keep_open=True
        )
        if self.init_code:
            await self._run_init_code(kernel_id)
        model = await self._reported_model(kernel_id)
        model[_SPEC_FIELD] = self.spec_fingerprint
        model[_POOLED_AT_FIELD] = time.time()
        pooled = await self.store.finish_start(kernel_id, model, self.replica_id)
        if pooled == 0:
            self.log.warning("Lease of kernel %s expired before it was ready", kernel_id)
            self._retire_soon(kernel_id, "lease expired")
            return False
        if pooled < 0:
            self.log.warning("Start of kernel %s was taken over by another replica", kernel_id)
            self.gateway.close_channel(kernel_id)
            return False
        self._kernel_pooled.set()
        self._kernel_pooled = asyncio.Event()
        return True

    async def _run_init_code(self, kernel_id: str) -> None:
        """Run the pool's init_code in a new kernel; what it defines stays for the user.

        Its failure fails the start; it is logged once until init_code works again, not once
        per kernel (every kernel of the pool fails it the same way).
        """
        try:
            await self.gateway.execute(
                kernel_id, self.init_code, self.kernel_ready_timeout, keep_open=True
            )
        except KernelReplyError as e:
            if not self._init_code_failing:
                self.log.error("init_code of pool %s fails: %s", self.kernel_name, e)
            self._init_code_failing = True
            raise InitCodeError(f"init_code failed: {e}") from e
        self._init_code_failing = False

    async def _wait_until_ready(self, kernel_id: str) -> None:
        """Wait for the new kernel's first kernel_info_reply, up to kernel_ready_timeout.

        The request is sent again every few seconds, on a fresh websocket: a kernel that died
        while starting and that EG restarted never answers the first one. Between tries EG is
        asked whether it still has the kernel: it drops one that keeps dying, and then the wait
        ends at once instead of after the whole timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kernel_ready_timeout
        while True:
            try_for = min(_READY_RETRY_INTERVAL, max(deadline - loop.time(), 0.1))
            try:
                await self.gateway.kernel_info(kernel_id, try_for)
                return
            except GatewayError as e:
                if e.status == 404 or loop.time() >= deadline:
                    raise
            if await self.gateway.get_kernel(kernel_id, self.kernel_request_timeout) is None:
                raise GatewayError(f"kernel {kernel_id} died while starting", 404)

    async def _reported_model(self, kernel_id: str) -> dict[str, Any]:
        """EG's model of a kernel that just answered, once EG itself has seen it idle.

        EG's activity watcher subscribes to the kernel's IOPub late and can miss the first
        status messages, reporting "starting" until the kernel publishes again: nudge it.
        """
        for attempt in range(_IDLE_REPORT_ATTEMPTS):
            model = await self.gateway.get_kernel(kernel_id, self.kernel_request_timeout)
            if model is None:
                raise GatewayError(f"kernel {kernel_id} exited right after starting", 404)
            if model.get("execution_state") == "idle":
                break
            await asyncio.sleep(_IDLE_REPORT_PAUSE * 2**attempt)  # the watcher's subscription
            await self.gateway.kernel_info(kernel_id, self.kernel_request_timeout)
        return model

    def _keep_lease(self, kernel_id: str, why: str) -> None:
        self.log.warning(
            "Kernel %s may yet start on EG (%s): it stays recorded until its lease expires in "
            "%.0fs, then a reconcile removes it",
            kernel_id,
            why,
            self._start_lease,
        )

    def _abandon_start_soon(self, kernel_id: str, reason: str) -> asyncio.Task:
        """Retire a started kernel in a task of its own, which stop() waits for but does not
        cancel: a cancelled start would otherwise leave it half retired, running on EG."""
        task = asyncio.create_task(self._abandon_start(kernel_id, reason))
        self._retirements.add(task)
        task.add_done_callback(self._retirements.discard)
        return task

    async def _abandon_start(self, kernel_id: str, reason: str) -> None:
        try:
            moved = await self.store.retire_starting(kernel_id)
        except RedisError:
            self.log.warning("Cannot retire kernel %s now; its lease will expire", kernel_id)
            return
        if moved:
            await self._retire(kernel_id, reason)

    # -- replicas: heartbeat and takeover ----------------------------------------------------

    @property
    def registered(self) -> bool:
        """Whether this replica's heartbeat in Redis surely still lasts: only then may it start
        and hand out kernels, as no other replica can have taken its work over."""
        return asyncio.get_running_loop().time() < self._registered_until

    @property
    def _heartbeat_ttl(self) -> float:
        return _HEARTBEAT_TTL_INTERVALS * self.replica_heartbeat_interval

    async def _heartbeat_loop(self) -> None:
        """Refresh this replica's heartbeat; take over the work of replicas whose ran out."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            sent = loop.time()
            try:
                await self._beat()
                await self.take_over_orphans()
            except RedisError as e:
                self._failed("redis", e)
            except GatewayError as e:
                self._failed("gateway", e)
            await asyncio.sleep(max(self.replica_heartbeat_interval - (loop.time() - sent), 0))

    async def _beat(self) -> None:
        sent = asyncio.get_running_loop().time()
        await self.store.beat(self.replica_id, self._heartbeat_ttl, self.spec_fingerprint)
        if not self.registered:
            self.log.info("Replica %s registered in Redis", self.replica_id)
            self._wake_filler.set()
        # Counted from before the request: Redis set the expiry later than that.
        self._registered_until = sent + self._heartbeat_ttl

    async def take_over_orphans(self) -> None:
        """Take over the starts and claims of replicas whose heartbeat ran out.

        Each is taken by one script, so of several live replicas exactly one takes it.
        """
        starts, claims = await self.store.orphans()
        for kernel_id in starts:
            if await self.store.take_over_start(kernel_id, self.replica_id, self._start_lease):
                self.log.warning("Took over the start of kernel %s from a dead replica", kernel_id)
                self._track_start(kernel_id, self._adopt_start(kernel_id))
        for kernel_id in claims:
            claim = await self.store.take_over_claim(kernel_id, self.replica_id)
            if claim is not None:
                self.log.warning("Took over the claim on kernel %s from a dead replica", kernel_id)
                task = asyncio.create_task(self._settle_orphaned_claim(claim))
                self._retirements.add(task)
                task.add_done_callback(self._retirements.discard)

    async def _adopt_start(self, kernel_id: str) -> None:
        """Finish a start a dead replica began: pool the kernel once it answers (a pod start is
        too much work to throw away); shut it down if EG does not have it or it fails."""
        outcome = "removed"
        try:
            spec = await self.store.start_spec(kernel_id)
            if spec not in (None, self.spec_fingerprint):
                # Started as another spec (a roll-over): not a kernel this replica would pool.
                await self._abandon_start_soon(kernel_id, "taken over; another spec")
            elif not await self._appears_on_eg(kernel_id):
                await self._abandon_start_soon(kernel_id, "taken over; not on EG")
            elif await self._pool_when_ready(kernel_id):
                outcome = "adopted"
                self.log.info("Kernel %s adopted and pooled", kernel_id)
            else:
                return
        except asyncio.CancelledError:
            self._abandon_start_soon(kernel_id, "jkp is stopping")
            raise
        except (GatewayError, RedisError) as e:
            self._count_error(e)
            self.log.warning("Adopted kernel %s did not become ready: %s", kernel_id, e)
            await asyncio.shield(self._abandon_start_soon(kernel_id, "taken over; failed"))
        finally:
            self._wake_filler.set()  # a place, or a start slot, is free
        self.metrics.takeovers.labels("start", outcome).inc()

    async def _appears_on_eg(self, kernel_id: str) -> bool:
        """Whether EG has the kernel, or gets it while a start request to it may still run.

        EG knows a kernel only once its start request is done, and on Kubernetes that takes as
        long as the pod's launch: a dead replica's request may still be under way. Such a
        request is given up after ``GatewayClient.request_timeout``, so waiting that long tells.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gateway.request_timeout
        while await self.gateway.get_kernel(kernel_id, self.kernel_request_timeout) is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(_READY_RETRY_INTERVAL, max(deadline - loop.time(), 0)))
        return True

    async def _settle_orphaned_claim(self, claim: Claim) -> None:
        """End a dead replica's claim: back to the pool if its set-up had not begun (the kernel
        is not in a user's directory), else shut the kernel down."""
        try:
            expression = set_up_not_begun_expression(self.working_dir)
            untouched = (
                await self.gateway.evaluate(
                    claim.kernel_id, expression, self.kernel_request_timeout
                )
                == "True"
            )
        except GatewayError as e:
            self.log.warning(
                "Kernel %s of a dead replica's pop did not answer: %s", claim.kernel_id, e
            )
            untouched = False
        try:
            if untouched and await self.store.release(claim):
                self.metrics.takeovers.labels("claim", "released").inc()
                self.log.info(
                    "Kernel %s of a dead replica's pop is back in the pool", claim.kernel_id
                )
                self._kernel_pooled.set()
                self._kernel_pooled = asyncio.Event()
            elif await self.store.retire_claim(claim):
                self.metrics.takeovers.labels("claim", "removed").inc()
                await self._retire(claim.kernel_id, "taken over mid-pop")
        except RedisError as e:
            self._count_error(e)  # the claim lease is the safety net

    # -- removal ----------------------------------------------------------------------------

    def _retire_soon(self, kernel_id: str, reason: str) -> None:
        """Shut a retired kernel down in the background (pops do not wait for EG's DELETE)."""
        task = asyncio.create_task(self._retire(kernel_id, reason))
        self._retirements.add(task)
        task.add_done_callback(self._retirements.discard)

    async def _retire(self, kernel_id: str, reason: str) -> None:
        """Shut a kernel in the retiring set down on EG, then forget it.

        When EG cannot be reached it stays in the retiring set and the next reconcile retries.
        """
        try:
            self.gateway.close_channel(kernel_id)
            await self.gateway.shutdown_kernel(kernel_id)
            await self.store.forget_retired(kernel_id)
            self.metrics.kernels_removed.labels(reason).inc()
            self.log.info("Kernel %s removed (%s)", kernel_id, reason)
        except (GatewayError, RedisError) as e:
            self._count_error(e)
            self.log.warning("Kernel %s not removed yet (%s): %s", kernel_id, reason, e)

    async def reconcile(self) -> None:
        """Make Redis and EG agree: drop dead idle kernels, finish pending removals, trim.

        Also syncs this replica's websockets with the idle list (see sync_channels).
        """
        # Read before the idle list: a kernel pooled meanwhile is in one or the other.
        starting = set(self._starts)
        alive = []
        for model_json in await self.store.idle_models():
            kernel_id = json.loads(model_json)["id"]
            if await self.gateway.get_kernel(kernel_id) is not None:
                alive.append(kernel_id)
            elif await self.store.retire_idle(kernel_id, model_json):
                self.log.info("Idle kernel %s is gone from EG; dropped", kernel_id)
                self.gateway.close_channel(kernel_id)
                await self.store.forget_retired(kernel_id)
        self._sync_channels(alive, starting)
        for kernel_id in await self.store.expired_starting_ids():
            if await self.store.retire_starting(kernel_id):
                await self._retire(kernel_id, "start lease expired")
        for claim in await self.store.stale_claims(self._claim_lease):
            if await self.store.retire_claim(claim):
                await self._retire(claim.kernel_id, "claim expired during a pop")
        models = {m: json.loads(m) for m in await self.store.idle_models()}
        await self._roll_over(models)
        # One replica per interval does what needs doing once for all.
        turn = self.check_task_interval * _ACTIVATION_TURN_SHARE
        upkeep = await self.store.take_turn(self.store.keys.upkeep, self.replica_id, turn)
        if self.max_kernel_age:
            await self._recycle_old_kernels(models, retire=upkeep)
        target = self.max_pending_kernels + self._recycling
        for kernel_id in await self.store.trim_surplus(target, self.spec_fingerprint):
            await self._retire(kernel_id, "above max_pending_kernels")
        for kernel_id in await self.store.retiring_ids():
            await self._retire(kernel_id, "pending removal")
        if upkeep:
            await self.check_handed_out()

    async def _roll_over(self, models: dict[str, dict[str, Any]]) -> None:
        """Retire the idle kernels of a spec no live replica runs any more (an old image or
        init_code): their replicas are gone, and no pop will take them."""
        if not self.registered:
            return  # this replica's own spec may not be among the live ones
        live = await self.store.live_specs()
        for model_json, model in models.items():
            spec = model.get(_SPEC_FIELD)
            if spec is not None and spec not in live:
                if await self.store.retire_idle(model["id"], model_json):
                    await self._retire(model["id"], "its spec is no longer run")

    async def _recycle_old_kernels(self, models: dict[str, dict[str, Any]], retire: bool) -> None:
        """Replace idle kernels older than max_kernel_age, a few at a time, the pool never
        below its size: the target grows by as many as are being replaced (on every replica,
        read off the same idle list), and old kernels are retired, by the replica whose
        ``retire`` turn it is, only while the pool holds more than its size."""
        now = time.time()
        own = {
            j: m for j, m in models.items() if m.get(_SPEC_FIELD) in (None, self.spec_fingerprint)
        }
        old = sorted(
            (j for j, m in own.items() if now - m.get(_POOLED_AT_FIELD, now) > self.max_kernel_age),
            key=lambda j: own[j][_POOLED_AT_FIELD],
        )
        retired = 0
        for model_json in old[: max(len(own) - self.max_pending_kernels, 0) if retire else 0]:
            kernel_id = own[model_json]["id"]
            if await self.store.retire_idle(kernel_id, model_json):
                await self._retire(kernel_id, "older than max_kernel_age")
                retired += 1
        self._recycling = min(len(old) - retired, _RECYCLE_AT_ONCE)
        if self._recycling:
            self.refill()

    async def check_handed_out(self) -> None:
        """Forget handed-out kernels EG no longer has (shut down by their user, or culled).

        Pages through the hash (HSCAN), so a large one costs Redis no spike.
        """
        cursor = 0
        while True:
            cursor, kernel_ids = await self.store.handed_page(cursor, _HANDED_PAGE)
            gone = await self._gone_from_eg(kernel_ids)
            await self.store.forget_handed(gone)
            for kernel_id in gone:
                self.log.info("Handed-out kernel %s is gone from EG; forgotten", kernel_id)
            if cursor == 0:
                return

    async def _gone_from_eg(self, kernel_ids: list[str]) -> list[str]:
        """Those of ``kernel_ids`` that EG no longer has."""
        gone: list[str] = []

        async def check(kernel_id: str) -> None:
            if await self.gateway.get_kernel(kernel_id, self.kernel_request_timeout) is None:
                gone.append(kernel_id)

        await _gather_bounded(check, kernel_ids, _CHECKS_AT_ONCE)
        return gone

    # -- websockets to idle kernels ---------------------------------------------------------

    async def _channel_sync_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.channel_sync_interval)
            try:
                await self.sync_channels()
            except RedisError as e:
                self._failed("redis", e)

    async def sync_channels(self) -> None:
        """Keep a websocket open to each idle kernel, and none to any other.

        Opens one to each idle kernel this replica has none to (pooled by another replica, or
        before a restart), so that a pop of it need not set one up; closes those to kernels no
        longer idle (handed out through another replica), since an open websocket keeps EG's
        culler off a kernel.
        """
        starting = set(self._starts)  # read before the idle list: see reconcile
        idle_ids = [json.loads(m)["id"] for m in await self.store.idle_models()]
        self._sync_channels(idle_ids, starting)

    def _sync_channels(self, idle_ids: list[str], starting: set[str]) -> None:
        """Close the websockets to kernels neither idle nor starting; open the missing ones in
        a task of their own, so that slow kernels hold up neither the fill loop nor the sync."""
        self.gateway.close_channels_except({*idle_ids, *starting})
        missing = [k for k in idle_ids if self.gateway.wants_channel(k)]
        opening = self._tasks.get("open-channels")
        if missing and (opening is None or opening.done()):  # else the next sync takes them
            self._tasks["open-channels"] = asyncio.create_task(
                self._open_channels(missing), name="jkp-open-channels"
            )

    async def _open_channels(self, kernel_ids: list[str]) -> None:
        """Open a websocket to each kernel (a kernel_info round on it), a few at a time."""

        async def open_channel(kernel_id: str) -> None:
            if not self.gateway.wants_channel(kernel_id):
                return  # opened meanwhile, or the limit was reached
            try:
                await self.gateway.kernel_info(kernel_id, self.kernel_request_timeout)
            except GatewayError as e:
                # Not proof the kernel is dead: the next pop or activation will tell.
                self.log.debug("No websocket to idle kernel %s: %s", kernel_id, e)

        await _gather_bounded(open_channel, kernel_ids, _CHECKS_AT_ONCE)

    # -- activation ---------------------------------------------------------------------------

    async def _activation_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.activation_interval)
            try:
                # Replicas share the idle list: one sweep per interval is enough.
                turn = self.activation_interval * _ACTIVATION_TURN_SHARE
                if await self.store.take_activation_turn(self.replica_id, turn):
                    await self.activate_idle_kernels()
            except RedisError as e:
                self._failed("redis", e)

    async def activate_idle_kernels(self) -> None:
        """Send every idle kernel a kernel_info_request; replace those that do not answer."""
        models = await self.store.idle_models()
        await _gather_bounded(
            self._activate, models, max(self.max_concurrent_starts, _CHECKS_AT_ONCE)
        )

    async def _activate(self, model_json: str) -> None:
        kernel_id = json.loads(model_json)["id"]
        try:
            await self.gateway.kernel_info(kernel_id, self.kernel_request_timeout)
            self.metrics.activations.labels("ok").inc()
            self.log.debug("Kernel %s activated", kernel_id)
            return
        except GatewayError as e:
            self.metrics.activations.labels("failed").inc()
            failure = e
        try:
            alive = await self.gateway.get_kernel(kernel_id) is not None
        except GatewayError as e:
            # EG itself is failing: an outage must not drain the pool.
            self._failed("gateway", e)
            return
        if await self.store.retire_idle(kernel_id, model_json):
            why = "did not answer activation" if alive else "gone from EG"
            self.log.warning("Idle kernel %s %s: %s", kernel_id, why, failure)
            await self._retire(kernel_id, why)
            self.refill()

    # -- state reporting ----------------------------------------------------------------------

    def _failed(self, component: str, error: Exception) -> None:
        """Log a component's failure once per change of state, not once per attempt."""
        if self._failing.get(component) is None:
            self.log.error("%s is failing: %s", component, error)
        self._failing[component] = str(error)
        self._count_error(error)

    def _count_error(self, error: Exception) -> None:
        """Count a failed call to Redis or EG, and keep it among the last errors shown."""
        dependency = "redis" if isinstance(error, RedisError) else "gateway"
        self.metrics.errors.labels(dependency).inc()
        self._last_errors.append(
            {"time": time.time(), "dependency": dependency, "message": str(error)}
        )

    def _recovered(self, component: str) -> None:
        if self._failing.pop(component, None) is not None:
            self.log.info("%s is back", component)

    async def unready_reason(self) -> str | None:
        """Why this replica cannot hand kernels out now, beyond Redis or EG being down; None
        when it can (or will, once a kernel being started is ready)."""
        if not self.registered:
            return "this replica's heartbeat in Redis ran out; it has not registered again yet"
        why = self._set_up_guard.why_paused
        if why is not None:
            return why
        if self._start_failures >= _STARTS_FAILING and (await self.store.counts())["idle"] == 0:
            return (
                f"the pool is empty and kernel starts keep failing ({self._start_failures} in a "
                f"row); last: {self._last_start_error}"
            )
        return None

    async def status(self) -> dict[str, Any]:
        """This pool as Redis holds it, and what this replica saw failing last."""
        counts = await self.store.counts()
        self.metrics.set_pool_counts(self.max_pending_kernels, counts)
        return {
            "replica": self.replica_id,
            "replicas": await self.store.live_replicas(),
            "kernel_name": self.kernel_name,
            "target": self.max_pending_kernels,
            **counts,
            "errors": dict(self._failing),
            "last_errors": list(self._last_errors),
        }


async def _gather_bounded(
    work: Callable[[T], Awaitable[None]], items: Iterable[T], at_once: int
) -> None:
    """Run ``work`` on every item, at most ``at_once`` at a time."""
    semaphore = asyncio.Semaphore(at_once)

    async def bounded(item: T) -> None:
        async with semaphore:
            await work(item)

    await asyncio.gather(*(bounded(item) for item in items))

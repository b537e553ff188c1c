"""Filler: keeps a pool at its target: the fill loop, kernel starts, their back-off."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from jkp.services.gateway import GatewayError, KernelReplyError
from jkp.services.pool.common import (
    POOLED_AT_FIELD,
    READY_RETRY_INTERVAL,
    SPEC_FIELD,
    InitCodeError,
    PoolPart,
    Shared,
    StartSlots,
    count_idle_time,
)
from jkp.services.pool.sizing import Sizer
from jkp.user import SET_UP_COMM_TARGET, SET_UP_PROBE, WARM_UP_CODE, set_up_comm_id

_START_BACKOFF_BASE = 1.0
_IDLE_REPORT_ATTEMPTS = 6
_IDLE_REPORT_PAUSE = 0.05
# Pause of the fill loop while Redis or EG fail: doubles from the first, up to the cap.
_FAILING_RETRY_FIRST = 0.5
_FAILING_RETRY_CAP = 10.0


class Filler(PoolPart):
    """Starts kernels while the pool (idle + starting, across replicas) is below its target,
    and pools each once it answers; wakes on a pop, a free start slot, and every check.

    ``check`` (the keeper's reconcile) runs first and every ``check_task_interval``. A pool
    sized by demand (``sizer.adaptive``) also reads its target every ``sizing_interval`` (so
    another replica's pops raise it within that time), and
    retires its surplus idle kernels, oldest first, once the demand that asked for them has
    passed.
    """

    def __init__(
        self,
        shared: Shared,
        start_slots: StartSlots,
        check: Callable[[], Awaitable[None]],
        sizer: Sizer,
    ):
        super().__init__(shared)
        self.start_slots = start_slots
        self._check = check
        self.sizer = sizer
        # The idle and starting kernels the pool asks for now (all replicas); None: not read
        # yet, the maximum until then.
        self._target: int | None = None
        self.starts: dict[str, asyncio.Task] = {}  # by kernel id
        self._wake_event = asyncio.Event()
        # Replaced each time a kernel is pooled, so every waiter on the old one wakes.
        self._kernel_pooled = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.start_failures = 0
        # The last start's error while starts fail, for /api/pool: EG's status and message.
        self.start_error: dict[str, Any] | None = None
        self._next_start_at = 0.0
        # Set by the first pop after the pool was last topped up: no start before then.
        self._refill_at: float | None = None
        self._init_code_failing = False
        # Kernels being replaced for their age: the target is raised by as many.
        self.recycling = 0
        start_slots.register(self.wake)

    @property
    def target(self) -> int:
        """The idle and starting kernels the pool asks for now (all replicas)."""
        return self.sizer.maximum if self._target is None else self._target

    def start(self) -> None:
        """Start the fill loop."""
        self._task = asyncio.create_task(self._run(), name="jkp-fill")

    def tasks(self) -> list[asyncio.Task]:
        """The fill loop and the starts under way, for stop() to cancel."""
        return [t for t in (self._task, *self.starts.values()) if t is not None]

    def stop(self) -> None:
        """Start nothing more; the fill loop ends at its next turn."""
        self._stopping = True

    def wake(self) -> None:
        """Make the fill loop look at the pool now."""
        self._wake_event.set()

    def kernel_was_pooled(self) -> None:
        """Wake every pop waiting for a kernel."""
        self._kernel_pooled.set()
        self._kernel_pooled = asyncio.Event()

    def refill(self) -> None:
        """Ask the fill loop to top the pool up now."""
        self._refill_at = None
        self.wake()

    def refill_later(self) -> None:
        """A pop took a kernel: top the pool up ``refill_delay`` after the burst's first pop.

        The delay is fixed, not pushed back by later pops, so a steady stream of pops cannot
        hold refills off for longer.
        """
        if self._refill_at is None:
            self._refill_at = asyncio.get_running_loop().time() + self.options.refill_delay
        self.wake()

    async def wait_for_kernel(self, timeout: float) -> None:
        """Wait until a kernel is pooled, up to ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._kernel_pooled.wait(), timeout)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        """Reconcile, then keep the pool at target; wakes on refill() and every check interval."""
        loop = asyncio.get_running_loop()
        next_check = 0.0
        failed_rounds = 0
        while not self._stopping:
            self._wake_event.clear()
            try:
                if loop.time() >= next_check:
                    await self._check()
                    next_check = loop.time() + self.options.check_task_interval
                    self.health.recovered("gateway")
                await self._resize()
                await self._start_missing()
                self.health.recovered("redis")
            except RedisError as e:
                self.health.failed("redis", e)
            except GatewayError as e:
                self.health.failed("gateway", e)
            now = loop.time()
            delay = next_check - now
            if self.sizer.adaptive:
                delay = min(delay, self.options.sizing_interval)
            for start_at in (self._next_start_at, self._refill_at):
                if start_at is not None and start_at > now:
                    delay = min(delay, start_at - now)
            if self.health.failing:
                failed_rounds += 1
                delay = min(
                    delay, _FAILING_RETRY_FIRST * 2 ** (failed_rounds - 1), _FAILING_RETRY_CAP
                )
            else:
                failed_rounds = 0
            try:
                await asyncio.wait_for(self._wake_event.wait(), max(delay, 0.01))
            except TimeoutError:
                pass

    def _start_backoff(self) -> float:
        """Pause before the next start after ``start_failures`` failures in a row."""
        return min(
            self.options.max_start_backoff, _START_BACKOFF_BASE * 2 ** (self.start_failures - 1)
        )

    async def _resize(self) -> None:
        """Read the pool's target from its demand, and retire the idle kernels above the
        (never lower) target of trims, oldest first."""
        if not self.sizer.adaptive:
            return
        self._target, trim_target = await self.sizer.targets()
        self.metrics.pool_target.set(self.target)
        held = self.sizer.held
        if held is not None and held <= trim_target + self.recycling:
            return  # nothing to retire: no second script on each read
        spec = self.options.spec_fingerprint
        for model_json in await self.store.trim_oldest(trim_target + self.recycling, spec):
            model = json.loads(model_json)
            count_idle_time(self.metrics, model)
            self.retirer.retire_soon(model["id"], "above its target")

    async def _start_missing(self) -> None:
        """Start kernels while the pool (idle + starting, across replicas) is below target."""
        now = asyncio.get_running_loop().time()
        if now < self._next_start_at:
            return
        if self._refill_at is not None:
            if now < self._refill_at:
                return
            self._refill_at = None
        while not self._stopping and self.registration.registered and self.start_slots.free:
            kernel_id = str(uuid.uuid4())
            if not await self.store.reserve_start(
                kernel_id,
                self.target + self.recycling,
                self.options.start_lease,
                self.options.replica_id,
                self.options.spec_fingerprint,
            ):
                return
            self.track_start(kernel_id, self._start_kernel(kernel_id))
            if self.start_failures:
                return  # after failures, try one at a time until one succeeds

    def track_start(self, kernel_id: str, start: Coroutine[Any, Any, None]) -> None:
        """Run a start in a task stop() cancels, counted against max_concurrent_starts."""
        task = asyncio.create_task(start, name=f"jkp-start-{kernel_id}")
        self.starts[kernel_id] = task
        self.start_slots.take()

        def done(_: asyncio.Task) -> None:
            self.starts.pop(kernel_id, None)
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
            await self.gateway.start_kernel(
                self.options.kernel_name, self.options.kernel_start_env(kernel_id)
            )
            requested = True
            self.log.info("Kernel %s started on EG", kernel_id)
            if not await self.pool_when_ready(kernel_id, started):
                return
        except asyncio.CancelledError:
            if requested:
                self.retirer.abandon_start_soon(kernel_id, "jkp is stopping")
            else:
                self._keep_lease(kernel_id, "jkp stopped during its start request")
            raise
        except (GatewayError, RedisError) as e:
            self.metrics.kernel_starts.labels("failed").inc()
            self.health.count_error(e)
            self.start_failures += 1
            backoff = self._start_backoff()
            self._next_start_at = asyncio.get_running_loop().time() + backoff
            # Logged once per error, not once per attempt (EG refusing every start, e.g. for
            # its max_kernels_per_user, would fill the log); a failing init_code is logged
            # once by _run_init_code.
            changed = self.start_error is None or self.start_error["message"] != str(e)
            self.start_error = {
                "status": e.status if isinstance(e, GatewayError) else None,
                "message": str(e),
                "failures": self.start_failures,
                "time": time.time(),
            }
            quiet = isinstance(e, InitCodeError) or not changed
            log = self.log.debug if quiet else self.log.error
            log(
                "Starting kernel %s failed (%d in a row; next try in %.0fs): %s",
                kernel_id,
                self.start_failures,
                backoff,
                e,
            )
            if requested or not (isinstance(e, GatewayError) and e.outcome_unknown):
                # Shielded: stop() cancels until its tasks end, and a half-done abandon would
                # leave the kernel in the retiring set, running on EG.
                await asyncio.shield(self.retirer.abandon_start_soon(kernel_id, "start failed"))
            else:
                self._keep_lease(kernel_id, "its start request got no answer")
            return
        finally:
            self.wake()  # a start slot is free
        if self.start_error is not None:
            self.log.info("Kernel starts work again after %d failures", self.start_failures)
        self.start_failures = 0
        self.start_error = None
        self._next_start_at = 0.0
        self.metrics.kernel_starts.labels("ready").inc()
        self.metrics.start_duration.observe(asyncio.get_running_loop().time() - started)
        self.log.info("Kernel %s is ready and pooled", kernel_id)

    async def pool_when_ready(self, kernel_id: str, started: float | None = None) -> bool:
        """Wait until a started kernel answers, warm it up and pool it; with ``started`` (the
        loop time its start request was sent), its start latency is recorded for the pool.

        False when it is not this replica's to pool any more: its lease expired (the kernel is
        then shut down), or another replica took the start over (it pools the kernel).
        """
        await self._wait_until_ready(kernel_id)
        timeout = self.options.kernel_request_timeout
        await self.gateway.execute(kernel_id, WARM_UP_CODE, timeout, keep_open=True)
        # The pop's set-up comm, opened and asked once so its first use costs no more.
        comm_id = set_up_comm_id(kernel_id)
        await self.gateway.open_comm(kernel_id, comm_id, SET_UP_COMM_TARGET, timeout)
        probe = {**SET_UP_PROBE, "spec": self.options.spec_fingerprint}
        await self.gateway.comm_request(kernel_id, comm_id, probe, timeout, keep_open=True)
        if self.options.init_code:
            await self._run_init_code(kernel_id)
        model = await self._reported_model(kernel_id)
        model[SPEC_FIELD] = self.options.spec_fingerprint
        model[POOLED_AT_FIELD] = time.time()
        latency = None if started is None else asyncio.get_running_loop().time() - started
        pooled = await self.store.finish_start(kernel_id, model, self.options.replica_id, latency)
        if pooled == 0 and await self.records.is_idle(kernel_id):
            pooled = 1  # its lease was lost with Redis's records, and a rebuild pooled it
        if pooled == 0:
            self.log.warning("Lease of kernel %s expired before it was ready", kernel_id)
            self.retirer.retire_soon(kernel_id, "lease expired")
            return False
        if pooled < 0:
            self.log.warning("Start of kernel %s was taken over by another replica", kernel_id)
            self.gateway.close_channel(kernel_id)
            return False
        self.kernel_was_pooled()
        return True

    async def _run_init_code(self, kernel_id: str) -> None:
        """Run the pool's init_code in a new kernel; what it defines stays for the user.

        Its failure fails the start; it is logged once until init_code works again, not once
        per kernel (every kernel of the pool fails it the same way).
        """
        try:
            await self.gateway.execute(
                kernel_id, self.options.init_code, self.options.kernel_ready_timeout, keep_open=True
            )
        except KernelReplyError as e:
            if not self._init_code_failing:
                self.log.error("init_code of pool %s fails: %s", self.options.kernel_name, e)
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
        deadline = loop.time() + self.options.kernel_ready_timeout
        while True:
            try_for = min(READY_RETRY_INTERVAL, max(deadline - loop.time(), 0.1))
            try:
                await self.gateway.kernel_info(kernel_id, try_for)
                return
            except GatewayError as e:
                if e.status == 404 or loop.time() >= deadline:
                    raise
            if (
                await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout)
                is None
            ):
                raise GatewayError(f"kernel {kernel_id} died while starting", 404)

    async def _reported_model(self, kernel_id: str) -> dict[str, Any]:
        """EG's model of a kernel that just answered, once EG itself has seen it idle.

        EG's activity watcher subscribes to the kernel's IOPub late and can miss the first
        status messages, reporting "starting" until the kernel publishes again: nudge it.
        """
        for attempt in range(_IDLE_REPORT_ATTEMPTS):
            model = await self.gateway.get_kernel(kernel_id, self.options.kernel_request_timeout)
            if model is None:
                raise GatewayError(f"kernel {kernel_id} exited right after starting", 404)
            if model.get("execution_state") == "idle":
                break
            await asyncio.sleep(_IDLE_REPORT_PAUSE * 2**attempt)  # the watcher's subscription
            await self.gateway.kernel_info(kernel_id, self.options.kernel_request_timeout)
        return model

    def _keep_lease(self, kernel_id: str, why: str) -> None:
        self.log.warning(
            "Kernel %s may yet start on EG (%s): it stays recorded until its lease expires in "
            "%.0fs, then a reconcile removes it",
            kernel_id,
            why,
            self.options.start_lease,
        )

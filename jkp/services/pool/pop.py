"""A pop: what one carries (Handout: its user, deadline, caller, idempotency key), the errors
it can end in, and the guard that stops handing out while the share keeps failing set-ups."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

from jkp.errors import ApiError
from jkp.services.gateway import ShellReply
from jkp.services.pool.common import POOLED_AT_FIELD, SPEC_FIELD
from jkp.services.store import Idempotency

# Consecutive set-up failures of the share (not of the user) before hand-outs pause.
SET_UP_FAILURES_BEFORE_PAUSE = 3
# The first pause, in seconds; each further failure after a pause doubles it, up to the cap.
_FIRST_PAUSE = 5.0
_MAX_PAUSE = 120.0
# The least time a step of a pop is given, even at its deadline.
_MIN_STEP_TIME = 0.001


class PoolEmptyError(ApiError):
    """No idle kernel became available within the pop timeout; ``retry_after``: whole
    seconds until one is expected, when known."""

    status_code, reason = 503, "Pool empty"
    message_format = "No kernel available: {}"
    retry_after: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class UserDirectoryError(ApiError):
    """The user's directory leads outside working_dir (e.g. a symlink planted in the share)."""

    status_code, reason = 403, "User directory refused"
    message_format = "The user's directory was refused by the confinement check: {}"


class ShuttingDownError(ApiError):
    """jkp is stopping and takes no new pops."""

    status_code, reason = 503, "Shutting down"


class ReplicaUnregisteredError(ApiError):
    """This replica's heartbeat in Redis ran out: others may have taken its work over."""

    status_code, reason = 503, "Replica not registered"


class SetUpError(ApiError):
    """The set-up failed for a reason that is not the user's (e.g. the share is read-only or
    full); the kernel was shut down."""

    status_code, reason = 500, "Set-up failed"
    message_format = "Kernel set-up failed on the share, not because of the user: {}"


class KernelFailedError(ApiError):
    """The kernel taken for a request failed its set-up (no answer in time, or its websocket
    dropped) while EG still has it: it was shut down, and the request takes no other kernel,
    so that nothing a request carries can cost the pool more than one kernel."""

    status_code, reason = 503, "Kernel failed"
    message_format = (
        "The kernel taken failed its set-up and was shut down (a retry takes another): {}"
    )


class SetUpPausedError(ApiError):
    """Hand-outs are paused after set-ups kept failing."""

    status_code, reason = 503, "Set-up paused"
    message_format = "Not handing out kernels now: {}"


class PopAbandonedError(ApiError):
    """The caller hung up before the pop was answered; the kernel was put back or shut down."""

    # Nobody reads the answer: the status is for the access log.
    status_code, reason, has_body = 499, "Client Closed Request", False


@dataclasses.dataclass
class Handout:
    """One pop in progress: for whom, until when, and whether its caller is still there."""

    # Whom the kernel is handed to: the pop's userId, or a gateway create's KERNEL_USERNAME.
    user_id: str
    # What the kernel's set-up comm is sent before it is handed over (jkp.user.set_up_request).
    set_up: dict[str, Any]
    deadline: float  # event loop time
    client_gone: asyncio.Event
    idempotency: Idempotency | None = None
    # The latest a kernel may be claimed, when sooner than the deadline (a gateway create
    # waits only briefly for one before it starts cold).
    claim_deadline: float | None = None
    # A gateway create's client-side kernel id and its binding, stored with the hand-over;
    # the create's id, under which the claim reserves that kernel id until then.
    alias: str = ""
    binding: dict[str, Any] | None = None
    create_id: str = ""
    # Whether it found its pool empty and waited for a kernel (a miss, not a hit).
    waited: bool = False
    # Whether its claims have been counted as an arrival (once per request, not per try).
    arrived: bool = False
    # Its place in the pool's line of waiting pops (jkp.services.waiting_pops), and whether
    # it holds one: a request that ends without a kernel leaves the line.
    waiter: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    in_line: bool = False
    # Seconds by step (claim, set_up, hand_over), summed over the kernels it tried, for the
    # caller to report (Server-Timing); None when nobody asked.
    timings: dict[str, float] | None = None
    # Set once a kernel is claimed for it, just before that kernel's set-up is sent.
    claimed: asyncio.Event | None = None
    # The kernels its user may hold (max_kernels_per_user), counted by the claim; -1: no limit.
    user_limit: int = -1

    def remaining(self) -> float:
        """Seconds left until the pop's deadline."""
        return self.deadline - asyncio.get_running_loop().time()

    def claim_remaining(self) -> float:
        """Seconds left to claim a kernel in."""
        deadline = self.deadline if self.claim_deadline is None else self.claim_deadline
        return min(deadline, self.deadline) - asyncio.get_running_loop().time()

    def timeout(self, seconds: float) -> float:
        """``seconds``, cut to what is left of the pop's deadline."""
        return max(min(seconds, self.remaining()), _MIN_STEP_TIME)

    def check_client(self) -> None:
        """Raise PopAbandonedError once the caller has hung up."""
        if self.client_gone.is_set():
            raise PopAbandonedError("the caller closed the connection")

    def alias_for(self, kernel_id: str) -> str:
        """The id a gateway create's client knows kernel ``kernel_id`` by (its own, or the
        kernel's); '' for a pop."""
        return "" if self.binding is None else self.alias or kernel_id

    def step_timer(self, pop_steps: Histogram) -> Callable[[str], None]:
        """A function that records the time since it was made, or since its last call, as the
        duration of a step of the pop (in ``pop_steps``, jkp_pop_step_seconds, and its own
        timings): where a slow pop spent its time."""
        loop = asyncio.get_running_loop()
        last = loop.time()

        def step(name: str) -> None:
            nonlocal last
            now = loop.time()
            pop_steps.labels(name).observe(now - last)
            if self.timings is not None:
                self.timings[name] = self.timings.get(name, 0.0) + now - last
            last = now

        return step


def handed_model(pooled: dict[str, Any], reply: ShellReply) -> dict[str, Any]:
    """The model a pop answers: the pooled one, idle, last active at the set-up's answer."""
    # jkp's own fields stay in Redis; the caller gets EG's model.
    model = {k: v for k, v in pooled.items() if k not in (SPEC_FIELD, POOLED_AT_FIELD)}
    model["execution_state"] = "idle"
    if reply.replied_at:
        model["last_activity"] = reply.replied_at
    # EG counted jkp's own websockets when the kernel was pooled; they close as it is handed
    # out (another replica's at its next sync), and nobody else has been given its id.
    model["connections"] = 0
    return model


class SetUpGuard:
    """Counts set-ups the share failed in a row; after a few, pauses hand-outs.

    Each failure costs a kernel; a broken share (read-only, full) would otherwise burn the
    whole pool one pop at a time. The pause grows while failures go on after it.
    """

    def __init__(self) -> None:
        self.failures = 0
        self.last_error = ""
        self._pause = 0.0
        self._paused_until = 0.0

    def failed(self, error: Exception) -> None:
        """Record a set-up the share failed; pause after enough of them in a row."""
        self.failures += 1
        self.last_error = str(error)
        if self.failures >= SET_UP_FAILURES_BEFORE_PAUSE:
            self._pause = min(_MAX_PAUSE, self._pause * 2 if self._pause else _FIRST_PAUSE)
            self._paused_until = time.monotonic() + self._pause

    def succeeded(self) -> None:
        """A set-up succeeded: the share works."""
        self.failures = 0
        self._pause = 0.0
        self._paused_until = 0.0

    @property
    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(self._paused_until - time.monotonic(), 0.0)

    @property
    def why_paused(self) -> str | None:
        """Why hand-outs are paused now, or None."""
        left = self.paused_for
        if not left:
            return None
        return (
            f"hand-outs paused for {left:.0f}s after {self.failures} set-ups in a row failed; "
            f"last: {self.last_error}"
        )

    def check(self) -> None:
        """Raise SetUpPausedError while hand-outs are paused."""
        why = self.why_paused
        if why is not None:
            raise SetUpPausedError(why)

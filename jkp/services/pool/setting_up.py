"""SettingUp: a claimed kernel moved into its user's directory and handed over, and what
becomes of it when that fails (whose fault it was decides)."""

from __future__ import annotations

import asyncio
from typing import Any

from jkp.services.gateway import GatewayError, KernelReplyError, ShellReply
from jkp.services.pool.common import PoolPart, Shared
from jkp.services.pool.kernel_word import KernelWord, handout_record
from jkp.services.pool.pop import (
    Handout,
    KernelFailedError,
    PoolEmptyError,
    SetUpError,
    SetUpGuard,
    UserDirectoryError,
    handed_model,
)
from jkp.services.store import Claim
from jkp.user import KERNEL_HANDED, USER_DIR_REFUSED, set_up_comm_id

# Of a set-up's time, the share (up to a cap) kept back to ask EG whose fault a timeout was.
_VERDICT_TIME_SHARE = 0.25
_VERDICT_TIME_MAX = 0.5


class SettingUp(PoolPart):
    """Sets claimed kernels up for their pops, and guards against a failing share."""

    def __init__(self, shared: Shared):
        super().__init__(shared)
        self.guard = SetUpGuard()

    async def hand_over(self, claim: Claim, handout: Handout, model: dict[str, Any]) -> bool:
        """Record the claimed kernel as handed to the pop's user (and a gateway create's
        binding); False when the claim was taken back meanwhile."""
        alias, binding = handout.alias_for(claim.kernel_id), None
        if handout.binding is not None:
            binding = {**handout.binding, "kernel_id": claim.kernel_id}
        ttl = self.options.idempotency_ttl
        return await self.store.hand_over(claim, handout.user_id, model, ttl, alias, binding)

    async def set_up(
        self, claim: Claim, handout: Handout
    ) -> tuple[dict[str, Any], asyncio.Future[bool] | None] | None:
        """Move a claimed kernel into the user's dir: its model, and its hand-over when that
        began already; None to take the next kernel.

        The kernel answers the set-up (in the user's directory now), then reports itself idle
        1-2 ms later, once ipykernel has flushed its output streams. The hand-over (a Redis
        script) needs only the answer: it runs beside that wait (but for a pop with an
        Idempotency-Key), and the pop answers after both, so no caller sees the kernel busy
        with its set-up.

        The model is the one EG reported when the kernel was pooled, with ``execution_state``
        idle and ``last_activity`` the kernel's answer's time, and ``connections`` not
        counting jkp's own websockets: asking EG again would add a round trip to every pop.

        Who is at fault decides what becomes of the kernel. A kernel that EG no longer has is
        forgotten and None returned. One that EG still has but that failed the set-up (no
        answer in time, its websocket dropped) is retired and KernelFailedError raised: a
        request costs the pool one such kernel at most, whatever it carries. When EG itself
        fails, the kernel goes back to the pool if its set-up was not sent (it is retired
        otherwise) and GatewayError is raised. A refused user directory leaves the kernel
        untouched: it goes back and UserDirectoryError is raised. Any other error of the
        set-up is the share's: the kernel is shut down and SetUpError raised at once, rather
        than spending the pool on a broken share.
        """
        kernel_id = claim.kernel_id
        # Part of the time is kept back for asking EG whose fault a timeout was.
        budget = handout.timeout(self.options.kernel_request_timeout)
        verdict_time = min(_VERDICT_TIME_MAX, budget * _VERDICT_TIME_SHARE)
        answered: asyncio.Future[ShellReply] = asyncio.get_running_loop().create_future()
        sent = asyncio.Event()
        # The kernel keeps what it is handed out as: the last word, whatever Redis loses.
        kept = handout_record(
            handout.user_id, handout.alias_for(claim.kernel_id), self.options.kernel_name
        )
        request = asyncio.ensure_future(
            self.gateway.comm_request(
                kernel_id,
                set_up_comm_id(kernel_id),
                {**handout.set_up, "handout": kept},
                budget - verdict_time,
                keep_open=True,  # closed after the answer (see _pop), or when retired
                answered=answered,
                sent=sent,
            )
        )
        model: dict[str, Any] | None = None
        handing: asyncio.Future[bool] | None = None
        try:
            await asyncio.wait({request, answered}, return_when=asyncio.FIRST_COMPLETED)
            if answered.done() and answered.result().content.get("status") == "ok":
                model = handed_model(claim.model, answered.result())
                # A pop with an Idempotency-Key is handed over after the idle status: a retry
                # with the key is answered from the hand-over, and must never get a kernel that
                # may still fail to get idle.
                early = handout.idempotency is None and not handout.client_gone.is_set()
                if early and not request.done():
                    handing = asyncio.ensure_future(self.hand_over(claim, handout, model))
            await request
        except KernelReplyError as e:
            word = KernelWord.from_answer(e.content)
            if word is not None:
                await self._not_the_pools(claim, word)
                return None  # not the pool's to give, yet nothing is wrong with it: the next
            if e.content.get("ename") == USER_DIR_REFUSED:
                await self.store.release(claim)
                raise UserDirectoryError(str(e.content.get("evalue", e))) from e
            self.log.error("Kernel %s failed set-up for user %s: %s", kernel_id, handout.user_id, e)
            if await self.store.retire_claim(claim):
                self.retirer.retire_soon(kernel_id, "failed set-up")
            self.guard.failed(e)
            raise SetUpError(str(e)) from e
        except GatewayError as e:
            if handing is None:
                return await self._set_up_failed(claim, e, handout, sent.is_set(), verdict_time)
            # Set up, but never reported idle again (it died, or EG or its websocket failed):
            # nobody got it, so it is shut down, and the request fails.
            self.gateway.close_channel(kernel_id)
            if await handing and await self.store.retire_handed(kernel_id):
                self.retirer.retire_soon(kernel_id, "not idle after its set-up", str(e))
            raise KernelFailedError(f"kernel {kernel_id} was not idle after its set-up") from e
        finally:
            request.cancel()  # only when this pop itself was cancelled: it is done otherwise
        self.guard.succeeded()
        assert model is not None  # the request succeeded: its answer came, with status ok
        return model, handing

    async def _not_the_pools(self, claim: Claim, word: KernelWord) -> None:
        """A claimed kernel refused its set-up, as it was handed out before (a hand-over whose
        record Redis lost) or spoiled by a failed one: recorded as handed out (never shut
        down, never pooled again) or retired."""
        self.gateway.close_channel(claim.kernel_id)
        if word.status == KERNEL_HANDED:
            self.log.warning(
                "Kernel %s says it was handed to user %s already; recorded so, taking the next",
                claim.kernel_id,
                (word.handed or {}).get("user_id"),
            )
            binding = word.binding(claim.kernel_id)
            await self.records.hand_over_elsewhere(claim, word.handed_record(), binding)
        elif await self.store.retire_claim(claim):
            self.retirer.retire_soon(claim.kernel_id, "spoiled by a failed set-up")

    async def _set_up_failed(
        self,
        claim: Claim,
        error: GatewayError,
        handout: Handout,
        sent: bool,
        verdict_time: float,
    ) -> None:
        """Ask EG whether the kernel or EG failed the set-up, and deal with the kernel: None
        when it is gone from EG (the pop takes the next), else raise.

        No liveness check comes before a set-up, as it would cost EG and jkp a request per pop:
        only a failed one asks, in the time kept back for it.
        """
        kernel_id = claim.kernel_id
        self.gateway.close_channel(kernel_id)
        gone = error.status == 404
        if not gone:
            try:
                timeout = handout.timeout(verdict_time)
                gone = await self.gateway.get_kernel(kernel_id, timeout) is None
            except GatewayError as e:
                if not sent:
                    # EG failed before the set-up left: the kernel is untouched, keep it.
                    await self.store.release(claim)
                    raise error from None
                # The kernel may have run the set-up: it never goes back to the pool.
                if await self.store.retire_claim(claim):
                    self.retirer.retire_soon(kernel_id, "set-up unconfirmed", str(e))
                if e.outcome_unknown and handout.remaining() <= 0:
                    raise self.out_of_time() from error  # EG was given no time to answer
                raise error from None
        if gone:
            self.log.info("Kernel %s is gone from EG; taking the next", kernel_id)
            if await self.store.retire_claim(claim):
                await self.store.forget_retired(kernel_id)
            return
        self.log.warning(
            "Kernel %s did not answer its set-up (%s); shutting it down", kernel_id, error
        )
        if await self.store.retire_claim(claim):
            self.retirer.retire_soon(kernel_id, "did not answer its set-up", str(error))
        raise KernelFailedError(f"kernel {kernel_id} did not answer its set-up: {error}")

    def out_of_time(self) -> PoolEmptyError:
        return PoolEmptyError(f"no kernel could be set up within {self.options.pop_timeout:g}s")

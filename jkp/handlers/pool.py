"""The pool's HTTP API: ``POST /api/kernels/pop/``."""

from __future__ import annotations

import re
import time

from jkp.handlers.base import APIHandler, api_error

# 1 to 128 printable ASCII characters, as the Idempotency-Key draft allows any string.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,128}")


class PopHandler(APIHandler):
    """Hands one warm kernel to a user, already in the user's directory.

    A caller that hangs up before the answer costs no kernel: ``client_gone`` tells the pool,
    which stops at its next step. Errors (an unknown kernelName, an invalid userId, an empty
    pool...) are answered by APIHandler.write_error, each with its own status and reason.
    """

    async def post(self) -> None:
        body = self.get_json_body()
        if "userId" not in body:
            raise api_error(400, "userId is required", "Invalid userId")
        kernel_name = body.get("kernelName")
        if "kernelName" in body and not isinstance(kernel_name, str):
            raise api_error(400, "kernelName must be a string", "Invalid kernelName")
        pool = self.pools.get(kernel_name)
        env = None
        if "env" in body:
            try:
                env = self.settings["kernels"].pop_env(pool, body["env"])
            except ValueError as e:
                raise api_error(400, str(e), "Invalid env") from e
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            raise api_error(
                400,
                "Idempotency-Key must be 1 to 128 printable ASCII characters",
                "Invalid Idempotency-Key",
            )
        timings: dict[str, float] = {}
        limit = self.settings["kernels"].max_kernels_per_user
        # The pool checks the userId before it takes anything.
        model = await pool.pop(body["userId"], key, self.client_gone, env, timings, limit)
        started = time.perf_counter()
        self.set_server_timing(timings)
        self.write_json(model)
        pool.metrics.pop_steps.labels("response").observe(time.perf_counter() - started)


default_handlers = [(r"/api/kernels/pop/?", PopHandler)]

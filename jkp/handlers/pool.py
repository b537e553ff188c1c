"""The pool's HTTP API: ``POST /api/kernels/pop/``."""

from __future__ import annotations

import re
import time

from redis.exceptions import RedisError

from jkp.handlers.base import APIHandler, api_error
from jkp.services.gateway import GatewayError
from jkp.services.handout import (
    KernelFailedError,
    PoolEmptyError,
    PopAbandonedError,
    ReplicaUnregisteredError,
    SetUpError,
    SetUpPausedError,
    ShuttingDownError,
    UserDirectoryError,
)
from jkp.services.pools import UnknownPoolError
from jkp.services.store import IdempotencyConflict
from jkp.services.user_kernels import UserLimitReached
from jkp.user import InvalidUserId

# 1 to 128 printable ASCII characters, as the Idempotency-Key draft allows any string.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,128}")


class PopHandler(APIHandler):
    """Hands one warm kernel to a user, already in the user's directory.

    A caller that hangs up before the answer costs no kernel: ``client_gone`` tells the pool,
    which stops at its next step.
    """

    async def post(self) -> None:
        body = self.get_json_body()
        if "userId" not in body:
            raise api_error(400, "userId is required", "Invalid userId")
        kernel_name = body.get("kernelName")
        if "kernelName" in body and not isinstance(kernel_name, str):
            raise api_error(400, "kernelName must be a string", "Invalid kernelName")
        try:
            pool = self.pools.get(kernel_name)
        except UnknownPoolError as e:
            raise api_error(400, str(e), "Unknown kernelName") from e
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
        try:
            # The pool checks the userId before it takes anything.
            model = await pool.pop(body["userId"], key, self.client_gone, env, timings, limit)
        except InvalidUserId as e:
            raise api_error(400, str(e), "Invalid userId") from e
        except PopAbandonedError:
            self.set_status(499, "Client Closed Request")  # for the access log; nobody reads it
            return
        except ShuttingDownError as e:
            raise api_error(503, str(e), "Shutting down") from e
        except ReplicaUnregisteredError as e:
            raise api_error(503, str(e), "Replica not registered") from e
        except PoolEmptyError as e:
            retry = {} if e.retry_after is None else {"Retry-After": str(e.retry_after)}
            raise api_error(503, f"No kernel available: {e}", "Pool empty", retry) from e
        except SetUpPausedError as e:
            raise api_error(503, f"Not handing out kernels now: {e}", "Set-up paused") from e
        except IdempotencyConflict as e:
            raise api_error(409, str(e), "Idempotency-Key conflict") from e
        except UserLimitReached as e:
            raise api_error(403, str(e), "Forbidden") from e
        except UserDirectoryError as e:
            raise api_error(
                403,
                f"The user's directory was refused by the confinement check: {e}",
                "User directory refused",
            ) from e
        except KernelFailedError as e:
            raise api_error(
                503,
                f"The kernel taken failed its set-up and was shut down (a retry takes "
                f"another): {e}",
                "Kernel failed",
            ) from e
        except SetUpError as e:
            raise api_error(
                500,
                f"Kernel set-up failed on the share, not because of the user: {e}",
                "Set-up failed",
            ) from e
        except GatewayError as e:
            status = 503 if e.status is None else 502
            raise api_error(status, f"Enterprise Gateway failed: {e}", "Gateway error") from e
        except RedisError as e:
            raise api_error(503, f"Redis unavailable: {e}", "Store unavailable") from e
        started = time.perf_counter()
        self.set_server_timing(timings)
        self.write_json(model)
        pool.metrics.pop_steps.labels("response").observe(time.perf_counter() - started)


default_handlers = [(r"/api/kernels/pop/?", PopHandler)]

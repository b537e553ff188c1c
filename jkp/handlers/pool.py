"""The pool's HTTP API: ``POST /api/kernels/pop/``."""

from __future__ import annotations

from redis.exceptions import RedisError

from jkp.handlers.base import APIHandler, api_error
from jkp.services.gateway import GatewayError
from jkp.services.pool import PoolEmptyError, SetUpError, ShuttingDownError, UserDirectoryError
from jkp.user import InvalidUserId, validate_user_id


class PopKernelHandler(APIHandler):
    """Hands one warm kernel to a user, already in the user's directory."""

    async def post(self) -> None:
        body = self.get_json_body()
        if "userId" not in body:
            raise api_error(400, "userId is required", "Invalid userId")
        try:
            user_id = validate_user_id(body["userId"])
        except InvalidUserId as e:
            raise api_error(400, str(e), "Invalid userId") from e
        try:
            model = await self.pool.pop(user_id)
        except ShuttingDownError as e:
            raise api_error(503, str(e), "Shutting down") from e
        except PoolEmptyError as e:
            raise api_error(503, f"No kernel available: {e}", "Pool empty") from e
        except UserDirectoryError as e:
            raise api_error(
                403, f"Cannot set up the user's directory: {e}", "User directory refused"
            ) from e
        except SetUpError as e:
            raise api_error(500, f"Kernel set-up failed: {e}", "Set-up failed") from e
        except GatewayError as e:
            status = 503 if e.status is None else 502
            raise api_error(status, f"Enterprise Gateway failed: {e}", "Gateway error") from e
        except RedisError as e:
            raise api_error(503, f"Redis unavailable: {e}", "Store unavailable") from e
        self.write_json(model)


default_handlers = [(r"/api/kernels/pop/?", PopKernelHandler)]

"""APIHandler: the base of jkp's handlers, JSON in and JSON out, errors as jupyter_server's."""

from __future__ import annotations

import json
from http.client import responses
from typing import Any

from tornado import web

from jkp.services.gateway import GatewayClient
from jkp.services.pool import PoolManager


class APIHandler(web.RequestHandler):
    """A JSON API handler: every answer, errors included, is a JSON object."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    @property
    def pool(self) -> PoolManager:
        return self.settings["pool_manager"]

    @property
    def gateway(self) -> GatewayClient:
        return self.settings["gateway"]

    def get_json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; 400 when it is not one."""
        try:
            body = json.loads(self.request.body or b"")
        except ValueError as e:
            raise web.HTTPError(400, "Request body is not valid JSON", reason="Invalid JSON") from e
        if not isinstance(body, dict):
            raise web.HTTPError(400, "Request body must be a JSON object", reason="Invalid JSON")
        return body

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as ``{"message", "reason"}``: the message says what went wrong, for users."""
        message = responses.get(status_code, "Unknown HTTP Error")
        reason = None
        exc_info = kwargs.get("exc_info")
        if exc_info:
            error = exc_info[1]
            if isinstance(error, web.HTTPError):
                message = error.log_message % error.args if error.log_message else message
                reason = error.reason
        self.finish(json.dumps({"message": message, "reason": reason or self._reason}))

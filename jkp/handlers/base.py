"""APIHandler: the base of jkp's handlers, JSON in and JSON out, errors as jupyter_server's."""

from __future__ import annotations

import asyncio
import hmac
import json
from http.client import responses
from typing import Any, NamedTuple

from redis.exceptions import RedisError
from tornado import web
from tornado.log import app_log

from jkp.errors import ApiError
from jkp.services.gateway import GatewayClient
from jkp.services.pool.registry import PoolRegistry
from jkp.user import InvalidUserId

# Pop bodies are tiny; anything bigger is refused before it is read.
MAX_BODY_BYTES = 64 * 1024
_AUTH_SCHEMES = ("token", "bearer")


def api_error(
    status: int, message: str, reason: str, headers: dict[str, str] | None = None
) -> web.HTTPError:
    """An HTTPError whose message is shown as is (never %-formatted) in the body and the log,
    sent with ``headers`` (e.g. Retry-After)."""
    error = web.HTTPError(status, "%s", message, reason=reason)
    error.headers = headers or {}  # type: ignore[attr-defined]
    return error


class Answer(NamedTuple):
    """How a request is answered with an error."""

    status_code: int
    reason: str
    message: str
    headers: dict[str, str]
    has_body: bool = True


# Errors answered alike wherever a request meets them, though they know nothing of HTTP:
# Redis's, and jkp.user's. (status, reason, the message with the error's text in {}).
_OTHER_ERRORS: dict[type[Exception], tuple[int, str, str]] = {
    RedisError: (503, "Store unavailable", "Redis unavailable: {}"),
    InvalidUserId: (400, "Invalid userId", "{}"),
}


def answer_of(error: BaseException | None) -> Answer | None:
    """The answer to ``error``: its own (ApiError), or that of _OTHER_ERRORS; None when jkp
    does not expect it (tornado's 500)."""
    if isinstance(error, ApiError):
        return Answer(error.status_code, error.reason, error.message, error.headers, error.has_body)
    for kind, (status, reason, message) in _OTHER_ERRORS.items():
        if isinstance(error, kind):
            return Answer(status, reason, message.format(error), {})
    return None


def token_authenticated(headers: Any, expected: str | None, query_token: str = "") -> bool:
    """True when no token is configured, or the request carries it: in ``Authorization:
    token <t>`` (or ``Bearer <t>``), or as ``query_token`` where a handler accepts one."""
    if not expected:
        return True
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() not in _AUTH_SCHEMES:
        token = query_token
    # Constant time, so the comparison does not reveal how much of a guess was right.
    return bool(token) and hmac.compare_digest(token.strip().encode(), expected.encode())


@web.stream_request_body
class APIHandler(web.RequestHandler):
    """A JSON API handler: every answer, errors included, is a JSON object.

    When ``auth_token`` is set, requests must carry ``Authorization: token <t>`` (or
    ``Bearer <t>``) unless the handler sets ``auth_required = False``.

    The body is streamed in, so one over ``MAX_BODY_BYTES`` is refused with a JSON 413 from its
    ``Content-Length`` before any of it is read, whatever its size (tornado's own limit would
    answer a bare 400 and reset the connection); a chunked one is dropped once it is too big.
    """

    auth_required = True
    _body: bytearray
    _body_too_large = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def initialize(self) -> None:
        # Set when the caller hangs up: tornado does not cancel a handler then, so work for
        # the caller (a pop, a create) checks this and stops at its next step.
        self.client_gone = asyncio.Event()

    def prepare(self) -> None:
        if self.auth_required and not self.authenticated:
            raise api_error(401, "Missing or invalid Authorization token", "Unauthorized")
        self._body = bytearray()
        if int(self.request.headers.get("Content-Length") or 0) > MAX_BODY_BYTES:
            raise self._body_too_large_error()

    def on_connection_close(self) -> None:
        self.client_gone.set()

    def data_received(self, chunk: bytes) -> None:
        if self._body_too_large or len(self._body) + len(chunk) > MAX_BODY_BYTES:
            self._body_too_large = True
            self._body.clear()
        else:
            self._body += chunk

    @staticmethod
    def _body_too_large_error() -> web.HTTPError:
        return api_error(413, f"Request body over {MAX_BODY_BYTES} bytes", "Request body too large")

    @property
    def authenticated(self) -> bool:
        """True when no token is configured, or the request carries it."""
        return token_authenticated(self.request.headers, self.settings.get("auth_token"))

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this handler implements (for 405's Allow header)."""
        return [
            method
            for method in cls.SUPPORTED_METHODS
            if getattr(cls, method.lower()) is not getattr(web.RequestHandler, method.lower())
        ]

    @property
    def pools(self) -> PoolRegistry:
        return self.settings["pools"]

    @property
    def gateway(self) -> GatewayClient:
        return self.settings["gateway"]

    def get_json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; 400 when it is not one."""
        if self._body_too_large:
            raise self._body_too_large_error()
        try:
            body = json.loads(bytes(self._body))
        except ValueError as e:
            raise api_error(400, "Request body is not valid JSON", "Invalid JSON") from e
        if not isinstance(body, dict):
            raise api_error(400, "Request body must be a JSON object", "Invalid JSON")
        return body

    def set_server_timing(self, timings: dict[str, float]) -> None:
        """Tell the caller how long each step of its request took inside jkp (seconds by
        step), and ``total``, from its headers read to its answer, as a Server-Timing header
        in milliseconds: where a slow pop spent its time."""
        if timings:
            steps = {**timings, "total": self.request.request_time()}
            self.set_header(
                "Server-Timing",
                ", ".join(f"{step};dur={seconds * 1000:.2f}" for step, seconds in steps.items()),
            )

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """API errors (web.HTTPError, and those answer_of knows) are answered and logged by
        the request log; others are logged with the path only, as Tornado's own summary would
        include the query string."""
        if isinstance(value, web.HTTPError) or answer_of(value) is not None:
            return
        app_log.error(
            "Uncaught exception in %s %s",
            self.request.method,
            self.request.path,
            exc_info=(typ, value, tb),
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as ``{"message", "reason"}``: the message says what went wrong, for users.

        The one place an error becomes an answer: a web.HTTPError as tornado sends it, and
        the errors answer_of knows with their own status, reason and headers.
        """
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        message = responses.get(status_code, "Unknown HTTP Error")
        reason = None
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, web.HTTPError):
            # Headers an error carries (e.g. Retry-After); send_error cleared those set before.
            for name, value in getattr(error, "headers", {}).items():
                self.set_header(name, value)
            if error.log_message:
                message = error.log_message % error.args if error.args else error.log_message
            reason = error.reason
        answer = answer_of(error)
        if answer is not None:
            # Its status replaces the 500 tornado gives an error that is not a web.HTTPError.
            self.set_status(answer.status_code, answer.reason)
            for name, value in answer.headers.items():
                self.set_header(name, value)
            if not answer.has_body:
                self.finish()
                return
            message, reason = answer.message, answer.reason
        self.finish(json.dumps({"message": message, "reason": reason or self._reason}))


class NotFoundHandler(APIHandler):
    """Unknown paths: a JSON 404, whatever the method."""

    auth_required = False

    def prepare(self) -> None:
        raise api_error(404, f"No endpoint at {self.request.path}", "Not Found")

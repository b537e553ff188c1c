"""What Enterprise Gateway answers: its errors, a kernel's replies, a passed-through answer."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jkp.errors import ApiError

# What EG 3.3 (jupyter_server 1.x) fails with when it lists a kernel it is still adding: it
# puts the kernel in its list two of its event-loop turns before it gives it a last_activity.
_KERNEL_BEING_ADDED = "has no attribute 'last_activity'"


class GatewayError(ApiError):
    """EG could not be reached or answered with an error.

    ``status`` is the HTTP status EG answered with, or None when it could not be reached
    (connection refused, timeout).
    """

    reason, message_format = "Gateway error", "Enterprise Gateway failed: {}"

    def __init__(self, message: str, status: int | None = None, refused: bool = False):
        super().__init__(message)
        self.status = status
        self.refused = refused

    @property
    def status_code(self) -> int:  # type: ignore[override]
        """jkp's answer: 502 when EG answered with an error, 503 when it could not be reached."""
        return 503 if self.status is None else 502

    @property
    def outcome_unknown(self) -> bool:
        """True when EG may have acted on the request anyway: it was sent, no answer came."""
        return self.status is None and not self.refused


@dataclasses.dataclass(frozen=True)
class ShellReply:
    """A kernel's reply to a shell request, once the kernel said it is idle again."""

    content: dict[str, Any]
    # The kernel's timestamp of the reply: when it was last active for this request.
    replied_at: str | None


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """EG's answer to a request passed through as it came: status, headers kept, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def failed_on_a_kernel_being_added(self) -> bool:
        """EG answered a list of its kernels, or a create it checks ``max_kernels`` for by
        listing them first, with 500 because a kernel it is adding has no ``last_activity``
        yet: it did nothing else for the request, and a moment later it answers it."""
        body = self.json() if self.status == 500 else None
        return isinstance(body, dict) and _KERNEL_BEING_ADDED in str(body.get("traceback"))


class KernelReplyError(GatewayError):
    """The kernel answered a request with ``status: error``."""

    def __init__(self, message: str, content: dict[str, Any]):
        super().__init__(message)
        self.content = content


def eg_reason(body: bytes | None) -> str:
    """EG's own error message from an error response body, when it sent one."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return (body or b"").decode("utf-8", "replace")[:200]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or data)
    return str(data)

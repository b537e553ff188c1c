"""EG's kernels API as its clients know it: its error texts and answers, the kernel ids and
env values it takes, and its kernel models."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

from jkp.errors import ApiError
from jkp.services.store.user_kernels import UserLimitReached

# EG's text when a kernel id is taken; pybox looks for it to reuse the kernel.
ALREADY_EXISTS = "Kernel already exists: {}"
# EG's text for a kernel it does not have (404).
DOES_NOT_EXIST = "Kernel does not exist: {}"
_EG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# EG refuses longer KERNEL_* values with 400.
_MAX_ENV_VALUE = 4096


class KernelRequestError(ApiError):
    """A kernels API request jkp answers itself with an error: status, message, reason."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status_code = status
        self.reason = reason


def with_env(body: bytes) -> bytes:
    """A create's body with an ``env``, empty when it had none. EG 3.3 answers a create
    without env that overlaps another create (jkp's refills) with a 500 naming the other's
    kernel ("Kernel already exists"), which pybox would take for its own id."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return body
    if not isinstance(request, dict) or "env" in request:
        return body
    return json.dumps({**request, "env": {}}).encode()


def already_exists(kernel_id: str) -> KernelRequestError:
    return KernelRequestError(409, ALREADY_EXISTS.format(kernel_id), "Conflict")


def refused(error: UserLimitReached) -> KernelRequestError:
    """EG's answer to a create past max_kernels_per_user: 403 with its text."""
    return KernelRequestError(403, str(error), "Forbidden")


def bindable(name: Any, value: Any) -> bool:
    """Whether ``name=value`` can be set in a kernel's os.environ as it is."""
    if not isinstance(name, str) or not isinstance(value, str) or not name:
        return False
    if "=" in name or "\x00" in name or "\x00" in value or len(value) > _MAX_ENV_VALUE:
        return False  # os.environ cannot hold it, or EG refuses it (400)
    try:
        name.encode()
        value.encode()
    except UnicodeEncodeError:
        return False  # a lone surrogate
    return True


def is_uuid4(value: str) -> bool:
    """Whether ``value`` is a version 4 UUID, written as EG writes kernel ids."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


def shown_as(model: dict[str, Any], kernel_id: str) -> dict[str, Any]:
    """A kernel model as its client sees it: its id, and last_activity in EG's format."""
    model = {**model, "id": kernel_id}
    activity = model.get("last_activity")
    if isinstance(activity, str):
        try:
            when = datetime.datetime.fromisoformat(activity.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is not None:
                when = when.astimezone(datetime.timezone.utc)
            model["last_activity"] = when.strftime(_EG_TIME_FORMAT)
    return model

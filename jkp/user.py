"""The one check of a userId, and the only code built from it."""

from __future__ import annotations

import json
import re

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,128}")

# The name of the error the set-up raises when it refuses the user's directory, so jkp tells a
# refusal (the kernel is untouched) from the share failing (EACCES, ENOSPC: a PermissionError
# or OSError of the share, not of the user).
USER_DIR_REFUSED = "UserDirectoryRefused"

# Runs in the kernel. The user id and working dir arrive only as string literals; the
# resolved target must be a direct child of the resolved working dir, so neither a crafted id
# nor a symlink planted in the share can move the kernel elsewhere. The check comes before any
# change, so a refused kernel can go back to the pool.
_ENTER_USER_DIR = """\
def __jkp_enter_user_dir(base, user):
    import os
    class UserDirectoryRefused(Exception):
        pass
    base = os.path.realpath(base)
    target = os.path.realpath(os.path.join(base, user))
    if os.path.dirname(target) != base:
        raise UserDirectoryRefused("user directory %r is not inside %r" % (target, base))
    os.makedirs(target, exist_ok=True)
    os.chdir(target)
try:
    __jkp_enter_user_dir({working_dir}, {user_id})
finally:
    del __jkp_enter_user_dir
"""

# Run once in each new kernel before it is pooled: a fresh IPython kernel's first execute
# pays one-time costs (a few ms), which then fall on the pool, not on the pop's set-up.
# Same shape as the set-up and, like it, leaves nothing in the user's namespace.
WARM_UP_CODE = """\
def __jkp_warm_up():
    import os
    os.path.realpath(os.getcwd())
try:
    __jkp_warm_up()
finally:
    del __jkp_warm_up
"""


class InvalidUserId(ValueError):
    """The userId is not one safe path segment."""


def validate_user_id(value: object) -> str:
    """Return ``value`` if it is a usable userId, else raise InvalidUserId saying why.

    A userId is one path segment: 1 to 128 letters, digits, ``_ . @ -``, and not ``.`` or ``..``.
    """
    if not isinstance(value, str) or not value:
        raise InvalidUserId("userId must be a non-empty string")
    if not USER_ID_PATTERN.fullmatch(value) or value in (".", ".."):
        raise InvalidUserId(
            "userId must be 1 to 128 letters, digits or '_.@-', and not '.' or '..'"
        )
    return value


def enter_user_dir_code(working_dir: str, user_id: str) -> str:
    """Python code that makes ``<working_dir>/<user_id>`` in the kernel and moves into it."""
    # A validated userId is ASCII, where JSON and Python literals agree; working_dir may hold
    # any character, and only repr() round-trips all of them (JSON splits astral characters).
    return _ENTER_USER_DIR.format(
        working_dir=repr(working_dir), user_id=json.dumps(validate_user_id(user_id))
    )


def set_up_not_begun_expression(working_dir: str) -> str:
    """A Python expression, true in a kernel that no set-up has moved into a user's directory
    (its current directory is not a direct child of ``working_dir``)."""
    return (
        "__import__('os').path.dirname(__import__('os').getcwd()) != "
        f"__import__('os').path.realpath({working_dir!r})"
    )

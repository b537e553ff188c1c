"""The one check of a userId, and the only code built from it."""

from __future__ import annotations

import re

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,128}")

# The name of the error the set-up raises when it refuses the user's directory, so jkp tells a
# refusal (the kernel is untouched) from the share failing (EACCES, ENOSPC: a PermissionError
# or OSError of the share, not of the user).
USER_DIR_REFUSED = "UserDirectoryRefused"

# Runs in the kernel. Every value arrives only as a Python literal. The resolved target must
# lie inside the resolved working dir (a direct child for a pop's user directory), so neither a
# crafted path nor a symlink planted in the share can move the kernel elsewhere. The check
# comes before any change, so a refused kernel can go back to the pool; past it, a mark on
# ``sys`` tells a replica taking the pop over that the kernel is no longer pristine.
_SET_UP = """\
def __jkp_set_up(base, target, child_only, env):
    import os, sys
    class UserDirectoryRefused(Exception):
        pass
    if target is not None:
        base = os.path.realpath(base)
        target = os.path.realpath(os.path.join(base, target))
        if child_only:
            inside = os.path.dirname(target) == base
        else:
            inside = target != base and os.path.commonpath([base, target]) == base
        if not inside:
            raise UserDirectoryRefused("directory %r is not inside %r" % (target, base))
    sys._jkp_set_up = True
    if target is not None:
        os.makedirs(target, exist_ok=True)
        os.chdir(target)
    os.environ.update(env)
try:
    __jkp_set_up({working_dir}, {target}, {child_only}, {env})
finally:
    del __jkp_set_up
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


def enter_user_dir_code(working_dir: str, user_id: str, env: dict[str, str] | None = None) -> str:
    """Python code that makes ``<working_dir>/<user_id>`` in the kernel, moves into it, and
    sets ``env`` in its ``os.environ``."""
    return set_up_code(working_dir, validate_user_id(user_id), child_only=True, env=env)


def set_up_code(
    working_dir: str,
    target: str | None,
    child_only: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """Python code that moves the kernel into ``target`` (made if missing; absolute, or
    relative to ``working_dir``; None: it stays where it is), refused unless it resolves inside
    ``working_dir``, then sets ``env`` in the kernel's ``os.environ``.

    Only repr() of str round-trips every character as a Python literal (JSON splits astral
    characters), so every value goes in as repr() of a str or of a dict of str.
    """
    env = dict(env or {})
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("env names and values must be strings")
    return _SET_UP.format(
        working_dir=repr(working_dir),
        target=repr(target),
        child_only=repr(bool(child_only)),
        env=repr(env),
    )


def set_up_not_begun_expression(working_dir: str) -> str:
    """A Python expression, true in a kernel that no set-up has changed: it carries no set-up
    mark and its current directory is not a direct child of ``working_dir`` (a kernel set up
    by a jkp from before the mark)."""
    return (
        "not getattr(__import__('sys'), '_jkp_set_up', False) and "
        "__import__('os').path.dirname(__import__('os').getcwd()) != "
        f"__import__('os').path.realpath({working_dir!r})"
    )

"""The one check of a userId, and the only code built from it."""

from __future__ import annotations

import re
from typing import Any

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,128}")

# The name of the error the set-up raises when it refuses the user's directory, so jkp tells a
# refusal (the kernel is untouched) from the share failing (EACCES, ENOSPC: a PermissionError
# or OSError of the share, not of the user).
USER_DIR_REFUSED = "UserDirectoryRefused"

# The set-up, as it runs in the kernel. The target is read as a path inside the working dir
# (lexically: ``..`` may not climb out), and entered one directory at a time from there, each
# made if missing and opened without following a link (O_NOFOLLOW), the kernel finally moved
# to the last one by its descriptor: a link or file planted anywhere on the way (by another
# user's kernel, into the share) is refused, and nothing can change between the check and the
# move. The working dir itself is resolved once: the operator's share may be a link (a mount).
# Only a directory entered changes the kernel, so a refused kernel (or one whose directory
# cannot be made or entered) can go back to the pool; past that, a mark on ``sys`` tells a
# replica taking the pop over that it is not pristine. A kernel moved names its directory in
# KERNEL_WORKING_DIR (as EG's kernels started there do), not the pool's or the client's text.
_SET_UP_FUNCTION = """\
def __jkp_set_up(base, target, child_only, env):
    import errno, os, sys
    class UserDirectoryRefused(Exception):
        pass
    if target is not None:
        names = None
        for root in (os.path.normpath(base), os.path.realpath(base)):
            relative = os.path.relpath(os.path.join(root, target), root)
            if relative == os.curdir:
                names = []
            elif relative != os.pardir and not relative.startswith(os.pardir + os.sep):
                names = relative.split(os.sep)
            if names is not None:
                break
        if names is None or (child_only and len(names) != 1):
            raise UserDirectoryRefused("directory %r is not inside %r" % (target, base))
        fd = os.open(os.path.realpath(base), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
                inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = inner
            os.fchdir(fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UserDirectoryRefused(
                    "directory %r is not inside %r: a link or a file is in its way" % (target, base)
                ) from None
            if child_only:
                raise  # jkp's own user directory: the share failed
            # A path the client chose (too long, not the client's to enter).
            raise UserDirectoryRefused("cannot enter directory %r: %s" % (target, e)) from None
        finally:
            os.close(fd)
    sys._jkp_set_up = True
    os.environ.update(env)
    if target is not None:
        os.environ["KERNEL_WORKING_DIR"] = os.getcwd()
"""

# The set-up as one cell, every value a Python literal: for a kernel without the set-up comm
# (a kernel restarted after its hand-out, bound again).
_SET_UP = (
    _SET_UP_FUNCTION
    + """\
try:
    __jkp_set_up({working_dir}, {target}, {child_only}, {env})
finally:
    del __jkp_set_up
"""
)

# The comm target a pooled kernel serves its set-up on. A pop then sends the kernel one comm
# message whose data are the set-up's arguments, not code: the kernel answers as fast as a
# kernel_info_request, where a cell costs IPython's whole execute machinery (~7 ms here).
SET_UP_COMM_TARGET = "jkp.set_up"
# Which answers the set-up comm gives, for the pool's spec fingerprint: kernels pooled by a jkp
# with other answers are rolled over. 2: success is the comm_close, with {"status": "ok"}.
# 3: the user's directory is entered without following links. 4: KERNEL_WORKING_DIR names it.
# 5: the kernel keeps its hand-out's record, refuses a second set-up and answers queries.
SET_UP_PROTOCOL = 5

# What a pooled kernel answers about itself (a query, or a set-up once it was handed out):
# idle; handed out (with the record its set-up carried); or spoiled (a set-up failed in it
# after it may have changed something: it is neither idle nor anyone's).
KERNEL_IDLE = "idle"
KERNEL_HANDED = "handed"
KERNEL_SPOILED = "spoiled"

# Run once in each new kernel before it is pooled. It installs the set-up behind the comm
# target (in closures: nothing in the user's namespace), and pays a fresh kernel's one-time
# costs, which then fall on the pool, not on the pop. The kernel keeps, in the closure, its
# pool's spec (the warm-up's probe tells it) and, once a set-up succeeded, the hand-out's
# record: the kernel is the last word on whether it is anyone's, whatever Redis lost. A
# set-up that succeeded closes its comm for the caller and removes the target, but the comm
# still answers on its id: a second set-up is refused with the record, and a query (which
# changes nothing) gets it too.
WARM_UP_CODE = (
    "def __jkp_install(target_name):\n"
    + "".join("    " + line + "\n" for line in _SET_UP_FUNCTION.splitlines())
    + """\
    import os, time
    os.path.realpath(os.getcwd())
    manager = get_ipython().kernel.comm_manager
    state = {"status": "idle", "spec": None, "pooled_at": None, "handed": None}

    def open_set_up(comm, _open_msg):
        @comm.on_msg
        def set_up(msg):
            data = msg["content"]["data"]
            if data.get("probe"):
                state["spec"] = data.get("spec", state["spec"])
                state["pooled_at"] = state["pooled_at"] or time.time()
                comm.send({"status": "ok"})  # the warm-up's: the comm answers, nothing changes
                return
            if data.get("query") or state["status"] != "idle":
                comm.send(dict(state))  # what the kernel is; nothing changes
                return
            try:
                __jkp_set_up(data["base"], data["target"], data["child_only"], data["env"])
            except Exception as e:
                if type(e).__name__ != "UserDirectoryRefused":
                    state["status"] = "spoiled"  # it may have changed: never set up again
                comm.send({"status": "error", "ename": type(e).__name__, "evalue": str(e)})
            else:
                handed = dict(data.get("handout") or {}, target=data["target"], env=data["env"])
                state.update(status="handed", handed=dict(handed, handed_at=time.time()))
                comm.close({"status": "ok"})  # the answer: one message fewer than send + close
                manager.unregister_target(target_name, open_set_up)
                manager.register_comm(comm)  # closed for the caller, yet it answers on its id

    manager.register_target(target_name, open_set_up)
"""
    + f"try:\n    __jkp_install({SET_UP_COMM_TARGET!r})\nfinally:\n    del __jkp_install\n"
)


# What the warm-up asks the set-up comm: an answer, and no change.
SET_UP_PROBE = {"probe": True}
# What a query asks the set-up comm: what the kernel is (KERNEL_IDLE, ...), and no change.
SET_UP_QUERY = {"query": True}


def set_up_comm_id(kernel_id: str) -> str:
    """The id of the set-up comm jkp opens in a pooled kernel: any replica can name it."""
    return f"jkp-set-up-{kernel_id}"


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


def enter_user_dir_request(
    working_dir: str, user_id: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The set-up comm's data that make ``<working_dir>/<user_id>`` in the kernel, move it
    there, and set ``env`` in its ``os.environ``."""
    return set_up_request(working_dir, validate_user_id(user_id), child_only=True, env=env)


def set_up_request(
    working_dir: str,
    target: str | None,
    child_only: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The set-up comm's data that move the kernel into ``target`` (made if missing;
    absolute, or relative to ``working_dir``; None: it stays where it is), refused unless it
    resolves to ``working_dir`` or inside it (with ``child_only``: to a direct child), then set
    ``env`` in the kernel's ``os.environ``."""
    env = dict(env or {})
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("env names and values must be strings")
    return {"base": working_dir, "target": target, "child_only": bool(child_only), "env": env}


def set_up_code(
    working_dir: str,
    target: str | None,
    child_only: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """The set-up of ``set_up_request`` as one cell of Python, for a kernel that has no set-up
    comm. Only repr() of str round-trips every character as a Python literal (JSON splits
    astral characters), so every value goes in as repr() of a str or of a dict of str."""
    request = set_up_request(working_dir, target, child_only, env)
    return _SET_UP.format(
        working_dir=repr(request["base"]),
        target=repr(request["target"]),
        child_only=repr(request["child_only"]),
        env=repr(request["env"]),
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

"""The store's Lua scripts, read once at import from the ``.lua`` files beside this module.

``lua/<part>/<name>.lua`` is one script, called by its name ``"<part>/<name>"``; a line
``--- @include "includes/<fragment>"`` in it stands for ``lua/includes/<fragment>.lua`` (shared
functions and the Redis time), spliced in where it stands.
"""

from __future__ import annotations

import re
from importlib.resources import files

_LUA = files(__package__) / "lua"
_INCLUDE = re.compile(r'^--- @include "(\w+/\w+)"$', re.MULTILINE)


def _source(part: str, name: str) -> str:
    """Script ``part/name``'s text with its includes spliced in."""
    text = (_LUA / part / f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: _source(*m.group(1).split("/")).rstrip("\n"), text)


def _read_all() -> dict[str, str]:
    return {
        f"{part.name}/{path.name.removesuffix('.lua')}": _source(
            part.name, path.name.removesuffix(".lua")
        )
        for part in _LUA.iterdir()
        if part.is_dir() and part.name != "includes"
        for path in part.iterdir()
        if path.name.endswith(".lua")
    }


_SCRIPTS = _read_all()


def script(name: str) -> str:
    """The Lua text of script ``name`` (``"<part>/<name>"``), includes spliced in."""
    return _SCRIPTS[name]

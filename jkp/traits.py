"""Environment-backed trait defaults.

Each configurable trait of jkp may take its default from one ``JKP_*`` variable of the
original Go service. The variable is read only inside the trait's ``@default`` so the order
stays: command line > config file > environment > built-in default. A value that does not
parse stops start-up with a message that names the variable.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvValueError(ValueError):
    """A ``JKP_*`` environment variable holds a value its trait cannot take."""


def _from_env(name: str, default: T, parse: Callable[[str], T], kind: str) -> T:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse(raw.strip())
    except ValueError:
        raise EnvValueError(f"{name}={raw!r} is not {kind}") from None


def env_str(name: str, default: str) -> str:
    """The value of ``name``, or ``default`` when it is unset (an empty value is kept)."""
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    """``name`` parsed as an integer."""
    return _from_env(name, default, int, "an integer")


def env_float(name: str, default: float) -> float:
    """``name`` parsed as a number."""
    return _from_env(name, default, float, "a number")


def env_bool(name: str, default: bool) -> bool:
    """``name`` parsed as a boolean (1/0, true/false, yes/no, on/off)."""

    def parse(raw: str) -> bool:
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(raw)

    return _from_env(name, default, parse, "a boolean (true/false)")


def env_help(help_text: str, env_name: str) -> str:
    """Help text that names the trait's environment variable, as EG does."""
    return f"{help_text} ({env_name} env var)"

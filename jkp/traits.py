"""Environment-backed traits.

Each configurable trait of jkp may take its default from one ``JKP_*`` variable of the
original Go service, given once where the trait is declared::

    max_pending_kernels = EnvInt(10, env="JKP_MAX_PENDING_KERNELS", help="...").tag(config=True)

The variable is read only when the trait's default is needed, so the order stays: command line
> config file > environment > built-in default. Its name is added to the help text (and so to
``--help-all`` and ``--generate-config``). A value that does not parse stops start-up with a
message that names it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from traitlets import Bool, Dict, Float, Int, List, TraitError, TraitType, Unicode
from traitlets.config import Configurable


class EnvValueError(ValueError):
    """A ``JKP_*`` environment variable holds a value its trait cannot take."""


class _EnvDefault(TraitType):
    """A trait whose default comes from an environment variable, when it is set.

    Text traits take the variable as it is (an empty value is kept: ``JKP_NFS_VOLUME_SERVER=``
    means no volume); dicts parse it as JSON; lists split it at commas, as EG's own list
    variables are (an empty value is an empty list); other traits as a command-line value
    would be.
    """

    def __init__(self, *args: Any, env: str, help: str = "", **kwargs: Any):
        super().__init__(*args, help=f"{help} ({env} env var)", **kwargs)
        self.metadata["env"] = env

    @property
    def env(self) -> str:
        return self.metadata["env"]

    def default(self, obj: Any = None) -> Any:
        raw = os.environ.get(self.env)
        if raw is None:
            return super().default(obj)
        if isinstance(self, Unicode):
            return raw
        try:
            if isinstance(self, Dict):
                return json.loads(raw) if raw.strip() else {}
            if isinstance(self, List):
                return [item.strip() for item in raw.split(",") if item.strip()]
            return self.from_string(raw.strip())
        except (ValueError, TraitError):
            raise EnvValueError(f"{self.env}={raw!r}: expected {self.info()}") from None


def _env_backed(base: type[TraitType]) -> type[TraitType]:
    # Named as its base, so that --help-all shows "<Int>", not the subclass.
    return type(
        base.__name__,
        (_EnvDefault, base),
        {"__doc__": f"A {base.__name__} trait whose default may come from an env variable."},
    )


EnvUnicode = _env_backed(Unicode)
EnvInt = _env_backed(Int)
EnvFloat = _env_backed(Float)
EnvBool = _env_backed(Bool)
EnvDict = _env_backed(Dict)
EnvList = _env_backed(List)


def env_name(trait: TraitType) -> str | None:
    """The environment variable a trait's default comes from, if any."""
    return trait.metadata.get("env")


def check_options(configurable: Configurable, where: str = "") -> None:
    """Read and validate every option of ``configurable``; TraitError naming the option (and
    the variable its value came from) when one is bad.

    Assigning each value back runs the trait's own validator, which traitlets skips for values
    that come from a dynamic (environment) default.
    """
    for name in sorted(configurable.trait_names(config=True)):
        try:
            setattr(configurable, name, getattr(configurable, name))
        except TraitError as e:
            option = f"{where}{type(configurable).__name__}.{name}"
            env = env_name(configurable.traits()[name])
            if env in os.environ:
                option += f" (default from {env}={os.environ[env]!r})"
            raise TraitError(f"{option}: {e}") from None

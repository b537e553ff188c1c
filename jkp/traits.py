"""Environment-backed trait defaults.

Each configurable trait of jkp may take its default from one ``JKP_*`` variable of the
original Go service, named by the class attribute ``<trait>_env``. The variable is read only
inside the trait's ``@default`` so the order stays: command line > config file > environment >
built-in default. A value that does not parse stops start-up with a message that names it.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import TraitError, Unicode
from traitlets.config import Configurable


class EnvValueError(ValueError):
    """A ``JKP_*`` environment variable holds a value its trait cannot take."""


def env_default(configurable: Configurable, trait_name: str) -> Any:
    """The default of ``trait_name``: its ``JKP_*`` variable parsed like the trait, if set,
    else the trait's built-in default.

    Text traits take the variable as it is (an empty value is kept: ``JKP_NFS_VOLUME_SERVER=``
    means no volume); other traits parse it as a command-line value would be.
    """
    trait = configurable.traits()[trait_name]
    env_name = getattr(configurable, f"{trait_name}_env")
    raw = os.environ.get(env_name)
    if raw is None:
        return trait.default_value
    if isinstance(trait, Unicode):
        return raw
    try:
        return trait.from_string(raw.strip())
    except (ValueError, TraitError):
        raise EnvValueError(f"{env_name}={raw!r}: expected {trait.info()}") from None

"""jkp: a pool of warm Jupyter kernels on Enterprise Gateway, handed out per user."""

from jkp._version import __version__

__all__ = ["__version__"]

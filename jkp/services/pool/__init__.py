"""One warm pool of kernels: PoolManager and its parts (see manager.py)."""

from jkp.services.pool.common import StartSlots
from jkp.services.pool.manager import PoolManager

__all__ = ["PoolManager", "StartSlots"]

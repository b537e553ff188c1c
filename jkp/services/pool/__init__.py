"""Warm pools of kernels: one pool is a PoolManager and its parts (see manager.py); what a
pop carries and how it fails is pop.py; the pools of one jkp, by kernel spec, registry.py."""

from jkp.services.pool.common import StartSlots
from jkp.services.pool.manager import PoolManager

__all__ = ["PoolManager", "StartSlots"]

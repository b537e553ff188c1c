"""EG's kernels API as jkp serves it: KernelService (service.py) with its warm creates, cold
creates passed to EG (cold.py), requests that name a kernel (named.py), EG's kernel specs
(specs.py), and the API's texts, ids and models (eg_api.py)."""

from jkp.services.kernels.eg_api import KernelRequestError
from jkp.services.kernels.service import KernelService

__all__ = ["KernelRequestError", "KernelService"]

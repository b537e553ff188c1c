"""EG's kernel specs, as a create without a name or a refusal's text needs them."""

from __future__ import annotations

import logging
from typing import Any

from jkp.services.gateway import GatewayClient, GatewayError


class KernelSpecs:
    """EG's kernel specs, asked once EG can say."""

    def __init__(self, gateway: GatewayClient, log: logging.Logger | logging.LoggerAdapter):
        self.gateway = gateway
        self.log = log
        self._kernel_specs: dict[str, Any] | None = None

    async def default_name(self) -> str | None:
        """EG's default kernel spec (a create without ``name`` gets it)."""
        return (await self._models()).get("default")

    async def spec(self, name: str) -> dict[str, Any]:
        """Kernel spec ``name`` as EG describes it; {} when unknown."""
        spec = (await self._models()).get("kernelspecs", {}).get(name) or {}
        return spec.get("spec") or {}

    async def _models(self) -> dict[str, Any]:
        """EG's kernel specs, asked once; {} while EG cannot say."""
        if self._kernel_specs is None:
            try:
                self._kernel_specs = await self.gateway.kernel_spec_models()
            except GatewayError as e:
                self.log.warning("Cannot read EG's kernel specs now: %s", e)
                return {}
        return self._kernel_specs

"""Health, readiness and pool status: what probes and operators ask."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from jkp.handlers.base import APIHandler, api_error
from jkp.services.gateway import GatewayError

SPEC_PATH = Path(__file__).resolve().parent.parent / "static" / "openapi.yaml"
# The line of the shipped description that a running jkp fills with its pools.
_KERNEL_NAME_ENUM = "enum: [python_kubernetes]"
# A readiness probe must answer quickly even when a dependency hangs.
_READY_CHECK_TIMEOUT = 2.0


class HealthHandler(APIHandler):
    """Liveness: the process serves HTTP. Touches neither Redis nor EG. Open to all."""

    auth_required = False

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(APIHandler):
    """Readiness: this replica can serve, as Redis and EG answer; else 503 naming which does
    not. Not whether a pool is full or its starts fail: every replica shares the pools and EG,
    so that would take them all out of service, though creates (cold) and deletes still work;
    /api/pool says why a pool does not fill.

    Open to all, as Kubernetes probes send no token; the errors behind a 503 (hosts, ports)
    are shown only to authenticated callers.
    """

    auth_required = False

    async def get(self) -> None:
        redis_failure, gateway_failure = await asyncio.gather(
            _failure(self.settings["store"].ping()), _failure(self.gateway.ping())
        )
        missing = {"redis": redis_failure, "gateway": gateway_failure}
        missing = {name: failure for name, failure in missing.items() if failure}
        if missing:
            if self.authenticated:
                detail = "; ".join(f"{name}: {failure}" for name, failure in missing.items())
            else:
                detail = ", ".join(missing) + " unavailable"
            raise api_error(503, f"Not ready: {detail}", "Not ready")
        self.write_json({"status": "ready"})


async def _failure(check: Awaitable[object]) -> str | None:
    """Why ``check`` failed, or None when it succeeded in time."""
    try:
        await asyncio.wait_for(check, _READY_CHECK_TIMEOUT)
    except (RedisError, GatewayError, TimeoutError, OSError) as e:
        return str(e) or type(e).__name__
    return None


class PoolStatusHandler(APIHandler):
    """The pool as Redis holds it: target, idle, starting, handed out; this replica's errors."""

    async def get(self) -> None:
        self.write_json(await self.pools.status())  # Redis down: 503 (APIHandler.write_error)


class MetricsHandler(APIHandler):
    """Prometheus metrics; the pool's gauges are read from Redis at each scrape."""

    async def get(self) -> None:
        try:
            await self.pools.status()
        except RedisError:
            pass  # the gauges keep their last values; jkp_dependency_errors tells why
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.settings["metrics"].exposition())


class SpecHandler(APIHandler):
    """The OpenAPI 3 description of jkp's API, shipped in the package, with this jkp's pools
    as the values kernelName takes."""

    def get(self) -> None:
        pools = json.dumps(sorted(self.pools.pools))  # a JSON list is a YAML flow sequence
        spec = SPEC_PATH.read_text().replace(_KERNEL_NAME_ENUM, f"enum: {pools}", 1)
        self.set_header("Content-Type", "text/yaml; charset=UTF-8")
        self.finish(spec.encode())


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/ready", ReadyHandler),
    (r"/api/pool", PoolStatusHandler),
    (r"/api/spec.yaml", SpecHandler),
    (r"/metrics", MetricsHandler),
]

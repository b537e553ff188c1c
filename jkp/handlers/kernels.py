"""Enterprise Gateway's kernels API on jkp: warm creates, and everything else passed to EG.

Kernel routes come after the pop's (``/api/kernels/pop/``) in the app's handler list.
"""

from __future__ import annotations

from http.client import responses
from typing import Any

from tornado import web

from jkp.handlers.base import APIHandler
from jkp.services.gateway import Forwarded
from jkp.services.kernels import KernelService

_KERNEL_ID = r"(?P<kernel_id>[^/]+)"


class GatewayHandler(APIHandler):
    """A handler of EG's API: answers EG's answer as it came, or jkp's own JSON error."""

    @property
    def kernels(self) -> KernelService:
        return self.settings["kernels"]

    def request_body(self) -> bytes:
        """The body as the client sent it (jkp's size limit applies)."""
        if self._body_too_large:
            raise self._body_too_large_error()
        return bytes(self._body)

    async def relay(self, answer: Any, timings: dict[str, float] | None = None) -> None:
        """Answer with EG's answer; jkp's own errors as JSON. ``timings``, filled while the
        answer was made, go in a Server-Timing header."""
        forwarded: Forwarded = await answer  # errors: see APIHandler.write_error
        self.clear_header("Content-Type")
        self.clear_header("Cache-Control")
        self.set_status(forwarded.status, responses.get(forwarded.status, "Unknown"))
        for name, value in forwarded.headers.items():
            self.set_header(name, value)
        self.set_server_timing(timings or {})
        if forwarded.status in (204, 304):
            self.finish()
        else:
            self.finish(forwarded.body)


class MainKernelHandler(GatewayHandler):
    """``GET /api/kernels``: EG's list without the pools' kernels; ``POST``: a create, warm
    when a pool can serve it."""

    async def get(self) -> None:
        await self.relay(self.kernels.list_kernels(self.request.query))

    async def post(self) -> None:
        timings: dict[str, float] = {}
        await self.relay(
            self.kernels.create(self.request_body(), self.client_gone, timings), timings
        )


class KernelHandler(GatewayHandler):
    """``GET`` and ``DELETE /api/kernels/{id}``, for the kernel the client knows by that id."""

    async def get(self, kernel_id: str) -> None:
        await self.relay(self.kernels.forward("GET", kernel_id, query=self.request.query))

    async def delete(self, kernel_id: str) -> None:
        await self.relay(self.kernels.forward("DELETE", kernel_id))


class KernelActionHandler(GatewayHandler):
    """``POST /api/kernels/{id}/interrupt`` and ``/restart``."""

    async def post(self, kernel_id: str, action: str) -> None:
        body = self.request_body()
        headers = {"Content-Type": self.request.headers.get("Content-Type", "application/json")}
        await self.relay(
            self.kernels.forward("POST", kernel_id, action, body=body, headers=headers)
        )


class PassthroughHandler(GatewayHandler):
    """``GET /api``, ``/api/kernelspecs...`` and ``/kernelspecs/...``: passed to EG as they
    came, query string included."""

    async def get(self, path: str = "") -> None:
        headers = {k: v for k, v in self.request.headers.get_all()}
        await self.relay(
            self.kernels.gateway.forward(
                "GET", self.request.path, self.request.query, None, headers
            )
        )

    async def head(self, path: str = "") -> None:
        await self.get(path)


default_handlers: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/api/kernels/?", MainKernelHandler),
    (rf"/api/kernels/{_KERNEL_ID}/(?P<action>interrupt|restart)/?", KernelActionHandler),
    (rf"/api/kernels/{_KERNEL_ID}/?", KernelHandler),
    (r"/api/?()", PassthroughHandler),
    (r"/api/kernelspecs(/.*)?", PassthroughHandler),
    (r"/kernelspecs/(.*)", PassthroughHandler),
]

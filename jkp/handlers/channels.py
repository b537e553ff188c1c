"""``/api/kernels/{id}/channels``: a kernel's websocket, bridged to EG's frame for frame."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tornado import web
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketHandler,
)

from jkp.handlers.base import token_authenticated
from jkp.services.bridges import Bridge, SessionBridges
from jkp.services.gateway import MAX_WEBSOCKET_MESSAGE_BYTES, GatewayError, ack_quickly
from jkp.services.kernels import KernelRequestError, KernelService


class ChannelsHandler(WebSocketHandler):
    """Bridges a client's websocket to the kernel's websocket on EG.

    The upstream is opened before the client's is accepted, so the client gets EG's answer
    to the handshake (its status, or its subprotocol) and nothing EG sends first (the status
    messages of its kernel_info on connect) is lost: it waits in the upstream until the
    client is there to read it. Text and binary frames keep their type both ways; each side
    reads its next frame only once the last one was written to the other (back-pressure),
    and a close on either side closes the other with its code. A newer connection of the same
    kernel and ``session_id`` replaces it, as EG would (see jkp.services.bridges).
    """

    upstream: WebSocketClientConnection | None = None
    bridge: Bridge | None = None

    @property
    def kernels(self) -> KernelService:
        return self.settings["kernels"]

    @property
    def bridges(self) -> SessionBridges:
        return self.settings["bridges"]

    @property
    def max_message_size(self) -> int:
        return MAX_WEBSOCKET_MESSAGE_BYTES

    async def get(self, kernel_id: str) -> None:
        # Browsers cannot set headers on a websocket: the token may come as ?token=, as in
        # Jupyter Server.
        token = self.get_query_argument("token", "")
        if not token_authenticated(self.request.headers, self.settings.get("auth_token"), token):
            return self._refuse(401, "Missing or invalid Authorization token", "Unauthorized")
        # The client's query (session_id) goes to EG; jkp's own token does not.
        query = urlencode(
            [
                (k, v)
                for k, v in parse_qsl(self.request.query, keep_blank_values=True)
                if k != "token"
            ]
        )
        protocols = self.request.headers.get("Sec-WebSocket-Protocol", "")
        subprotocols = [p.strip() for p in protocols.split(",") if p.strip()]
        try:
            upstream_id = await self.kernels.upstream_id(kernel_id)
        except KernelRequestError as e:
            return self._refuse(e.status_code, e.message, e.reason)
        session_id = self.get_query_argument("session_id", "")
        if session_id:
            self.bridge = await self.bridges.open(upstream_id, session_id, self._give_way)
        try:
            try:
                self.upstream = await self.kernels.gateway.connect_channels(
                    upstream_id, query, subprotocols
                )
            except GatewayError as e:
                if e.status is not None:
                    return self._refuse(e.status, f"Enterprise Gateway: {e}", "Gateway refused")
                return self._refuse(503, f"Enterprise Gateway failed: {e}", "Gateway error")
            if self.bridge is not None and self.bridge.replaced:
                # Closed only now that EG opened it: EG cannot close a handshake under way, and
                # the newer connection waits (in SessionBridges.open) until EG has closed it.
                await _close_and_wait(self.upstream)
                return self._refuse(409, _REPLACED, "Conflict")
        finally:
            if self.bridge is not None:
                self.bridge.settled.set()
        await super().get(kernel_id)
        if self.ws_connection is None or self.ws_connection.is_closing():
            self.upstream.close()  # the client's handshake failed after all

    def _refuse(self, status: int, message: str, reason: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"message": message, "reason": reason}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors before the upgrade (e.g. a POST: 405) as JSON, as every jkp error."""
        if status_code == 405:
            self.set_header("Allow", "GET")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        reason = self._reason
        self.finish(json.dumps({"message": f"{status_code} {reason}", "reason": reason}))

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream else None

    def open(self, kernel_id: str) -> None:
        # Small kernel messages must not wait for Nagle (jupyter_server does not set it).
        self.set_nodelay(True)
        self._pump = asyncio.create_task(self._relay_upstream(), name=f"jkp-bridge-{kernel_id}")

    async def _relay_upstream(self) -> None:
        """EG's frames to the client, each once the one before it was written."""
        assert self.upstream is not None
        upstream = self.upstream
        while True:
            ack_quickly(upstream)
            message = await upstream.read_message()
            if message is None:
                self.close(*_close_args(upstream.close_code, upstream.close_reason))
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                upstream.close()
                return

    async def on_message(self, message: str | bytes) -> None:
        """The client's frames to EG; the next is read once this one was written."""
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            self.close()

    def _give_way(self) -> None:
        """A newer connection of this session arrived: close this one (once it is open)."""
        if self.ws_connection is not None:
            self.close(1000, _REPLACED)

    def on_close(self) -> None:
        if self.bridge is not None:
            self.bridges.close(self.bridge)
        if self.upstream is not None:
            self.upstream.close(*_close_args(self.close_code, self.close_reason))

    def on_finish(self) -> None:
        if self.ws_connection is None:
            if self.bridge is not None:
                self.bridges.close(self.bridge)
            # A handshake refused after the upstream opened (e.g. a bad Origin) leaves no
            # upstream.
            if self.upstream is not None:
                self.upstream.close()


_REPLACED = "Replaced by a newer connection of the same kernel and session"
# Seconds to wait for EG's answer to a close (its end of the websocket gone).
_CLOSE_WAIT = 2.0


async def _close_and_wait(upstream: WebSocketClientConnection) -> None:
    """Close a websocket to EG and wait (briefly) until EG has closed its end."""
    upstream.close()

    async def closed() -> None:
        while await upstream.read_message() is not None:
            pass

    try:
        await asyncio.wait_for(closed(), _CLOSE_WAIT)
    except TimeoutError:
        pass


def _close_args(code: int | None, reason: str | None) -> tuple[int | None, str | None]:
    """A close code as the other side may be sent it: 1005 (none given) and 1006 (dropped)
    only describe a close and are never sent."""
    if code is None or code in (1005, 1006):
        return None, None
    return code, reason


default_handlers: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/api/kernels/(?P<kernel_id>[^/]+)/channels", ChannelsHandler),
]

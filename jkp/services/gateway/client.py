"""GatewayClient: jkp's client of Enterprise Gateway, its REST API and its kernel websockets."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any
from urllib.parse import quote, urlsplit

from jupyter_client.session import Session
from tornado.websocket import WebSocketClientConnection
from traitlets import Dict, TraitError, validate
from traitlets.config import LoggingConfigurable

from jkp.services.gateway.answers import (
    Forwarded,
    GatewayError,
    KernelReplyError,
    ShellReply,
    eg_reason,
)
from jkp.services.gateway.channel import OpenChannels
from jkp.services.gateway.transport import Transport
from jkp.traits import EnvBool, EnvFloat, EnvInt, EnvUnicode

# Seconds between the sendings of a list or create EG fails on a kernel it is adding (it does
# for a few of its event-loop turns per start): ~0.4 s in all, then its answer stands.
_KERNEL_BEING_ADDED_PAUSES = (0.01, 0.02, 0.05, 0.1, 0.2)


class GatewayClient(LoggingConfigurable):
    """Client of one Enterprise Gateway: kernel lifecycle over REST, requests over websocket."""

    url = EnvUnicode(
        "http://127.0.0.1:8888",
        env="JKP_EG_ENDPOINT",
        help=(
            "Base URL of Enterprise Gateway, http:// or https://; the websocket scheme "
            "(ws/wss) is derived from it"
        ),
    ).tag(config=True)

    @validate("url")
    def _url_validate(self, proposal: Any) -> str:
        value = proposal["value"].rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TraitError(f"Enterprise Gateway URL must be http(s)://host[:port], got {value!r}")
        return value

    connect_timeout = EnvFloat(
        5.0, env="JKP_EG_CONNECT_TIMEOUT", help="Seconds to wait for a connection to EG"
    ).tag(config=True)

    request_timeout = EnvFloat(
        60.0, env="JKP_EG_REQUEST_TIMEOUT", help="Seconds to wait for EG to answer a REST request"
    ).tag(config=True)

    auth_token = EnvUnicode(
        "",
        env="JKP_EG_AUTH_TOKEN",
        help=(
            "EG's auth token (its EG_AUTH_TOKEN), sent as 'Authorization: token <t>' on "
            "every REST and websocket request"
        ),
    ).tag(config=True)

    ca_certs = EnvUnicode(
        "",
        env="JKP_EG_CA_CERTS",
        help="CA bundle (PEM file) to verify an https EG with; empty: the system's",
    ).tag(config=True)

    client_cert = EnvUnicode(
        "",
        env="JKP_EG_CLIENT_CERT",
        help="Client certificate (PEM file) for an EG that asks for one",
    ).tag(config=True)

    client_key = EnvUnicode(
        "", env="JKP_EG_CLIENT_KEY", help="Private key (PEM file) of client_cert"
    ).tag(config=True)

    validate_cert = EnvBool(
        True,
        env="JKP_EG_VALIDATE_CERT",
        help="Verify EG's TLS certificate; turn off only for testing",
    ).tag(config=True)

    headers = Dict(help="Extra HTTP headers sent with every REST and websocket request to EG").tag(
        config=True
    )

    max_open_channels = EnvInt(
        200,
        env="JKP_MAX_KERNEL_CONNECTIONS",
        help=(
            "Websockets to idle kernels kept open, so that a pop or activation need not "
            "set one up; each costs EG a few sockets"
        ),
        min=0,
    ).tag(config=True)

    max_requests = EnvInt(
        200,
        env="JKP_EG_MAX_REQUESTS",
        help=(
            "REST requests to EG under way at once (more wait for one to end); a start's "
            "request lasts until its kernel runs, so keep this well above "
            "max_concurrent_starts and the cold creates passed through at once"
        ),
        min=1,
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Builds message headers and ids; EG re-signs messages with the kernel's own key.
        self._session = Session(username="jkp")

    @property
    def ws_url(self) -> str:
        """The websocket base URL matching ``url``."""
        return self._transport.ws_url

    @functools.cached_property
    def _transport(self) -> Transport:
        # Built on first use, once the options were read and checked.
        headers = dict(self.headers)
        if self.auth_token:
            headers["Authorization"] = f"token {self.auth_token}"
        tls = {
            "validate_cert": self.validate_cert,
            "ca_certs": self.ca_certs or None,
            "client_cert": self.client_cert or None,
            "client_key": self.client_key or None,
        }
        return Transport(
            self.url, headers, self.connect_timeout, self.request_timeout, tls, self.max_requests
        )

    async def forward(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """Pass one client request to EG as it came; EG's answer, error statuses included.

        A list or create (``/api/kernels``) that EG fails on a kernel it is adding is sent
        again a moment later: EG did nothing for it (Forwarded.failed_on_a_kernel_being_added).
        Raises GatewayError only when EG cannot be reached or does not answer in time.
        """
        sent_again = path == "/api/kernels" and method in ("GET", "POST")
        for pause in _KERNEL_BEING_ADDED_PAUSES if sent_again else ():
            answer = await self._transport.forward(method, path, query, body, headers)
            if not answer.failed_on_a_kernel_being_added:
                return answer
            self.log.debug(
                "EG failed %s %s on a kernel it is adding; again in %gs", method, path, pause
            )
            await asyncio.sleep(pause)
        return await self._transport.forward(method, path, query, body, headers)

    async def connect_channels(
        self,
        kernel_id: str,
        query: str = "",
        subprotocols: list[str] | None = None,
        timeout: float | None = None,
    ) -> WebSocketClientConnection:
        """Open a websocket to a kernel's channels on EG, with a client's query
        (``session_id``) and subprotocols; the connection's ``selected_subprotocol`` is EG's
        choice. GatewayError (with EG's status when it answered one) when EG refuses it, or
        when it is not open within ``timeout`` (default ``request_timeout``)."""
        return await self._transport.connect(kernel_id, query, subprotocols, timeout)

    async def ping(self) -> dict[str, Any]:
        """EG's version info: proves it answers."""
        return await self._transport.request("GET", "/api")

    async def kernel_specs(self) -> set[str]:
        """The names of the kernel specs EG offers."""
        return set((await self.kernel_spec_models()).get("kernelspecs", {}))

    async def kernel_spec_models(self) -> dict[str, Any]:
        """EG's ``/api/kernelspecs``: its ``default`` spec name and its ``kernelspecs``."""
        return await self._transport.request("GET", "/api/kernelspecs") or {}

    async def start_kernel(self, kernel_name: str, env: dict[str, str]) -> dict[str, Any]:
        """Ask EG to start a kernel; returns its model (usually still ``starting``)."""
        body = json.dumps({"name": kernel_name, "env": env}).encode()
        answer = await self.forward(
            "POST", "/api/kernels", body=body, headers={"Content-Type": "application/json"}
        )
        return _answered(answer, "POST /api/kernels")

    async def list_kernels(self) -> list[dict[str, Any]]:
        """The models of every kernel EG runs (EG answers 403 unless its list_kernels is on)."""
        return _answered(await self.forward("GET", "/api/kernels"), "GET /api/kernels") or []

    async def get_kernel(
        self, kernel_id: str, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The kernel's current model, or None when EG no longer has it."""
        try:
            return await self._transport.request(
                "GET", f"/api/kernels/{quote(kernel_id)}", timeout=timeout
            )
        except GatewayError as e:
            if e.status == 404:
                return None
            raise

    async def shutdown_kernel(self, kernel_id: str) -> None:
        """Shut the kernel down on EG; a kernel that is already gone is not an error."""
        try:
            await self._transport.request("DELETE", f"/api/kernels/{quote(kernel_id)}")
        except GatewayError as e:
            if e.status != 404:
                raise

    async def kernel_info(
        self, kernel_id: str, timeout: float, keep_open: bool = True
    ) -> dict[str, Any]:
        """Send a kernel_info_request over the websocket; returns the reply content.

        This is also the keep-alive: the kernel's answer on IOPub resets EG's idle-cull timer.
        With ``keep_open`` the websocket stays open for the next request (a pop or the next
        activation), sparing EG's connection set-up (~10 ms with its own kernel_info round).
        """
        reply = await self._shell_request(kernel_id, "kernel_info_request", {}, timeout, keep_open)
        return reply.content

    async def execute(
        self,
        kernel_id: str,
        code: str,
        timeout: float,
        keep_open: bool = False,
        user_expressions: dict[str, str] | None = None,
    ) -> ShellReply:
        """Run ``code`` silently in the kernel; its execute_reply once the kernel is idle.

        Raises KernelReplyError when the reply's status is not ``ok``.
        """
        content = {
            "code": code,
            "silent": True,
            "store_history": False,
            "user_expressions": user_expressions or {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        reply = await self._shell_request(kernel_id, "execute_request", content, timeout, keep_open)
        status = reply.content.get("status")
        if status != "ok":
            ename, evalue = reply.content.get("ename", "error"), reply.content.get("evalue", status)
            raise KernelReplyError(f"{ename}: {evalue}", reply.content)
        return reply

    async def open_comm(
        self, kernel_id: str, comm_id: str, target_name: str, timeout: float
    ) -> None:
        """Open comm ``comm_id`` to the kernel's comm target ``target_name``; done once the
        kernel is idle again. The websocket stays open for the next request."""
        content = {"comm_id": comm_id, "target_name": target_name, "data": {}}
        await self._shell_request(kernel_id, "comm_open", content, timeout, True, reply=None)

    async def comm_request(
        self,
        kernel_id: str,
        comm_id: str,
        data: dict[str, Any],
        timeout: float,
        keep_open: bool = False,
        answered: asyncio.Future[ShellReply] | None = None,
        sent: asyncio.Event | None = None,
    ) -> ShellReply:
        """Send ``data`` on comm ``comm_id``; the data of the kernel's answer on that comm,
        once the kernel is idle again. KernelReplyError when its ``status`` is not ``ok``.

        ``answered``, when given, gets the answer as soon as it comes, before the kernel's
        idle status (ipykernel flushes its output streams in between, 1-2 ms): work that
        needs only the answer can start then. It stays pending when no answer comes.
        ``sent``, when given, is set once the message is written to EG: from then on the
        kernel may act on it, whatever happens to the request."""
        content = {"comm_id": comm_id, "data": data}
        reply = await self._shell_request(
            kernel_id, "comm_msg", content, timeout, keep_open, "comm", answered, sent
        )
        if reply.content.get("status") != "ok":
            ename, evalue = reply.content.get("ename", "error"), reply.content.get("evalue")
            raise KernelReplyError(f"{ename}: {evalue}", reply.content)
        return reply

    async def comm_query(
        self, kernel_id: str, comm_id: str, data: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """Send ``data`` on comm ``comm_id``; the data of the kernel's answer on it, or None
        when the kernel was idle again without answering (it has no such comm)."""
        content = {"comm_id": comm_id, "data": data}
        reply = await self._shell_request(kernel_id, "comm_msg", content, timeout, False, "comm?")
        return reply.content or None

    async def evaluate(self, kernel_id: str, expression: str, timeout: float) -> str:
        """The ``text/plain`` value of ``expression`` in the kernel, evaluated as a user
        expression: it defines no name and leaves no history."""
        reply = await self.execute(kernel_id, "", timeout, user_expressions={"value": expression})
        value = reply.content.get("user_expressions", {}).get("value", {})
        if value.get("status") != "ok":
            raise KernelReplyError(f"{value.get('ename')}: {value.get('evalue')}", value)
        return value.get("data", {}).get("text/plain", "")

    def wants_channel(self, kernel_id: str) -> bool:
        """Whether a websocket to this kernel should be opened: none is, and there is room."""
        return self._channels.wants(kernel_id)

    def close_channel(self, kernel_id: str) -> None:
        """Close the websocket kept open to a kernel, if any (it was handed out or removed)."""
        self._channels.close(kernel_id)

    def close_channels_except(self, kernel_ids: set[str]) -> None:
        """Close the websockets kept open to kernels other than ``kernel_ids``."""
        self._channels.close_except(kernel_ids)

    def close(self) -> None:
        """Close every websocket kept open, and the REST client."""
        self._channels.close_all()
        self._transport.close()

    @functools.cached_property
    def _channels(self) -> OpenChannels:
        # Built on first use, once the options were read and checked.
        return OpenChannels(self.connect_channels, self.max_open_channels)

    async def _shell_request(
        self,
        kernel_id: str,
        msg_type: str,
        content: dict[str, Any],
        timeout: float,
        keep_open: bool,
        reply: str | None = "shell",
        answered: asyncio.Future[ShellReply] | None = None,
        sent: asyncio.Event | None = None,
    ) -> ShellReply:
        """Send one shell request on the kernel's websocket; its reply once the kernel is idle.

        ``reply`` says what answers it: the shell reply, a ``comm_msg`` or ``comm_close`` from
        the kernel (``"comm"``), or nothing (None: done at idle). ``answered`` and ``sent``:
        see comm_request."""
        msg = self._session.msg(msg_type, content)
        msg["channel"] = "shell"
        return await self._channels.request(
            kernel_id, msg, timeout, keep_open, reply, answered, sent
        )


def _answered(answer: Forwarded, request: str) -> Any:
    """EG's JSON answer to ``request``; GatewayError with EG's status when it is an error."""
    if not 200 <= answer.status < 300:
        reason = eg_reason(answer.body)
        raise GatewayError(f"EG {request}: {answer.status} {reason}", answer.status)
    return answer.json()

"""The one place jkp talks to Enterprise Gateway: its REST API and its kernel websockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from typing import Any
from urllib.parse import quote, urlsplit

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect
from traitlets import Dict, TraitError, validate
from traitlets.config import LoggingConfigurable

from jkp.errors import ApiError
from jkp.traits import EnvBool, EnvFloat, EnvInt, EnvUnicode


class GatewayError(ApiError):
    """EG could not be reached or answered with an error.

    ``status`` is the HTTP status EG answered with, or None when it could not be reached
    (connection refused, timeout).
    """

    reason, message_format = "Gateway error", "Enterprise Gateway failed: {}"

    def __init__(self, message: str, status: int | None = None, refused: bool = False):
        super().__init__(message)
        self.status = status
        self.refused = refused

    @property
    def status_code(self) -> int:  # type: ignore[override]
        """jkp's answer: 502 when EG answered with an error, 503 when it could not be reached."""
        return 503 if self.status is None else 502

    @property
    def outcome_unknown(self) -> bool:
        """True when EG may have acted on the request anyway: it was sent, no answer came."""
        return self.status is None and not self.refused


@dataclasses.dataclass(frozen=True)
class ShellReply:
    """A kernel's reply to a shell request, once the kernel said it is idle again."""

    content: dict[str, Any]
    # The kernel's timestamp of the reply: when it was last active for this request.
    replied_at: str | None


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """EG's answer to a request passed through as it came: status, headers kept, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


# Of EG's answers, the headers a client of a passed-through request gets.
_FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Location", "Cache-Control", "Last-Modified", "Etag")
# Of a client's request, the headers EG gets (jkp's own Authorization stays with jkp).
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "If-None-Match", "If-Modified-Since")
# The largest websocket message jkp reads, either way; tornado refuses a bigger one with close
# code 1009 from its frame header, before it buffers any of it. A client's: EG's own limit
# (tornado's default, which EG keeps), so nothing EG would take is refused. A kernel's: the
# same as Jupyter Server's gateway client, as a kernel's output is its user's to size, and one
# message must not exhaust a replica that serves every user.
MAX_WEBSOCKET_MESSAGE_BYTES = 10 * 1024 * 1024


class KernelReplyError(GatewayError):
    """The kernel answered a request with ``status: error``."""

    def __init__(self, message: str, content: dict[str, Any]):
        super().__init__(message)
        self.content = content


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

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Builds message headers and ids; EG re-signs messages with the kernel's own key.
        self._session = Session(username="jkp")
        self._channels: dict[str, KernelChannel] = {}

    def _request_options(self) -> dict[str, Any]:
        """What every REST and websocket request to EG carries: headers, auth, TLS."""
        headers = dict(self.headers)
        if self.auth_token:
            headers["Authorization"] = f"token {self.auth_token}"
        return {
            "headers": headers,
            "connect_timeout": self.connect_timeout,
            "validate_cert": self.validate_cert,
            "ca_certs": self.ca_certs or None,
            "client_cert": self.client_cert or None,
            "client_key": self.client_key or None,
        }

    @property
    def ws_url(self) -> str:
        """The websocket base URL matching ``url``."""
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    async def _request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """Send one REST request to EG and return its decoded JSON body (None when empty).

        ``timeout`` bounds the request (default ``request_timeout``).
        """
        options = self._request_options()
        options["headers"]["Content-Type"] = "application/json"
        request = HTTPRequest(
            self.url + path,
            method=method,
            body=None if body is None else json.dumps(body),
            request_timeout=timeout or self.request_timeout,
            allow_nonstandard_methods=True,
            **options,
        )
        try:
            # AsyncHTTPClient() is one shared client per event loop.
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.code == 599 or e.response is None:
                raise GatewayError(f"EG {method} {path}: {e}") from e
            raise GatewayError(
                f"EG {method} {path}: {e.code} {_eg_reason(e.response.body)}", e.code
            ) from e
        except ConnectionRefusedError as e:
            raise GatewayError(f"EG {method} {path}: {e}", refused=True) from e
        except OSError as e:
            raise GatewayError(f"EG {method} {path}: {e}") from e
        return json.loads(response.body) if response.body else None

    async def forward(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """Pass one client request to EG as it came; EG's answer, error statuses included.

        Raises GatewayError only when EG cannot be reached or does not answer in time.
        """
        options = self._request_options()
        for name in _FORWARDED_REQUEST_HEADERS:
            if headers and name in headers:
                options["headers"][name] = headers[name]
        url = self.url + path + (f"?{query}" if query else "")
        request = HTTPRequest(
            url,
            method=method,
            body=body if body or method in ("POST", "PUT", "PATCH") else None,
            request_timeout=self.request_timeout,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            **options,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except ConnectionRefusedError as e:
            raise GatewayError(f"EG {method} {path}: {e}", refused=True) from e
        except OSError as e:
            raise GatewayError(f"EG {method} {path}: {e}") from e
        if response.code == 599:
            raise GatewayError(f"EG {method} {path}: {response.error}")
        kept = {
            n: response.headers[n] for n in _FORWARDED_RESPONSE_HEADERS if n in response.headers
        }
        return Forwarded(response.code, kept, response.body or b"")

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
        timeout = timeout or self.request_timeout
        url = f"{self.ws_url}/api/kernels/{quote(kernel_id)}/channels"
        request = HTTPRequest(
            url + (f"?{query}" if query else ""),
            request_timeout=timeout,
            **self._request_options(),
        )
        try:
            async with asyncio.timeout(timeout):
                return await websocket_connect(
                    request,
                    subprotocols=subprotocols or None,
                    max_message_size=MAX_WEBSOCKET_MESSAGE_BYTES,
                )
        except TimeoutError as e:
            raise GatewayError(f"no websocket to kernel {kernel_id} in {timeout}s") from e
        except HTTPClientError as e:
            status = None if e.code == 599 else e.code
            raise GatewayError(f"EG websocket of kernel {kernel_id}: {e}", status) from e
        except (OSError, WebSocketError) as e:
            raise GatewayError(f"EG websocket of kernel {kernel_id}: {e}") from e

    async def ping(self) -> dict[str, Any]:
        """EG's version info: proves it answers."""
        return await self._request("GET", "/api")

    async def kernel_specs(self) -> set[str]:
        """The names of the kernel specs EG offers."""
        return set((await self.kernel_spec_models()).get("kernelspecs", {}))

    async def kernel_spec_models(self) -> dict[str, Any]:
        """EG's ``/api/kernelspecs``: its ``default`` spec name and its ``kernelspecs``."""
        return await self._request("GET", "/api/kernelspecs") or {}

    async def start_kernel(self, kernel_name: str, env: dict[str, str]) -> dict[str, Any]:
        """Ask EG to start a kernel; returns its model (usually still ``starting``)."""
        return await self._request("POST", "/api/kernels", {"name": kernel_name, "env": env})

    async def list_kernels(self) -> list[dict[str, Any]]:
        """The models of every kernel EG runs (EG answers 403 unless its list_kernels is on)."""
        return await self._request("GET", "/api/kernels") or []

    async def get_kernel(
        self, kernel_id: str, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The kernel's current model, or None when EG no longer has it."""
        try:
            return await self._request("GET", f"/api/kernels/{quote(kernel_id)}", timeout=timeout)
        except GatewayError as e:
            if e.status == 404:
                return None
            raise

    async def shutdown_kernel(self, kernel_id: str) -> None:
        """Shut the kernel down on EG; a kernel that is already gone is not an error."""
        try:
            await self._request("DELETE", f"/api/kernels/{quote(kernel_id)}")
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
        channel = self._channels.get(kernel_id)
        if channel is not None and not channel.closed:
            return False
        return len(self._channels) < self.max_open_channels

    def close_channel(self, kernel_id: str) -> None:
        """Close the websocket kept open to a kernel, if any (it was handed out or removed)."""
        channel = self._channels.pop(kernel_id, None)
        if channel is not None:
            channel.close()

    def close_channels_except(self, kernel_ids: set[str]) -> None:
        """Close the websockets kept open to kernels other than ``kernel_ids``."""
        for kernel_id in [k for k in self._channels if k not in kernel_ids]:
            self.close_channel(kernel_id)

    def close(self) -> None:
        """Close every websocket kept open."""
        for kernel_id in list(self._channels):
            self.close_channel(kernel_id)

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        channel = self._channels.pop(kernel_id, None)
        try:
            if channel is None or channel.closed:
                channel = await self._connect(kernel_id, timeout)
            answer = await channel.request(
                msg, max(deadline - loop.time(), 0.001), reply, answered, sent
            )
        except BaseException:
            if channel is not None:
                channel.close()  # in an unknown state: never reuse it
            raise
        if keep_open and len(self._channels) < self.max_open_channels:
            self._channels[kernel_id] = channel
        else:
            channel.close()
        return answer

    async def _connect(self, kernel_id: str, timeout: float) -> KernelChannel:
        conn = await self.connect_channels(kernel_id, timeout=timeout)
        return KernelChannel(kernel_id, conn)


class KernelChannel:
    """One open websocket to a kernel through EG; replies are matched to requests by msg_id.

    A reader task reads every frame as it comes (re-arming TCP_QUICKACK before each read) and
    completes the request whose reply and idle status both arrived.
    """

    def __init__(self, kernel_id: str, conn: WebSocketClientConnection):
        self.kernel_id = kernel_id
        self._conn = conn
        self._waiters: dict[str, _ReplyWaiter] = {}
        self._reader = asyncio.create_task(self._read(), name=f"jkp-ws-{kernel_id}")

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def request(
        self,
        msg: dict[str, Any],
        timeout: float,
        reply: str | None = "shell",
        answered: asyncio.Future[ShellReply] | None = None,
        sent: asyncio.Event | None = None,
    ) -> ShellReply:
        """Send ``msg``; its reply (see GatewayClient._shell_request) once the kernel is idle
        again after it. ``sent`` is set as the message is written."""
        waiter = _ReplyWaiter(reply, answered)
        msg_id = msg["header"]["msg_id"]
        self._waiters[msg_id] = waiter
        try:
            async with asyncio.timeout(timeout):
                # Raises at once when the websocket is closed: then nothing was sent.
                written = self._conn.write_message(json.dumps(msg, default=json_default))
                if sent is not None:
                    sent.set()  # the frame may reach EG now, even if this request times out
                await written
                return await waiter.done
        except TimeoutError as e:
            what = msg["header"]["msg_type"]
            if waiter.replied:
                raise GatewayError(
                    f"kernel {self.kernel_id} answered its {what} but did not report itself "
                    f"idle within {timeout:.3g}s"
                ) from e
            raise GatewayError(
                f"no {what} reply from kernel {self.kernel_id} in {timeout:.3g}s"
            ) from e
        except (OSError, WebSocketError) as e:
            raise GatewayError(f"EG websocket of kernel {self.kernel_id}: {e}") from e
        finally:
            self._waiters.pop(msg_id, None)

    async def _read(self) -> None:
        why = f"EG closed the websocket of kernel {self.kernel_id}"
        try:
            while True:
                ack_quickly(self._conn)
                raw = await self._conn.read_message()
                if raw is None:
                    return
                if isinstance(raw, bytes):
                    continue  # binary frames carry buffers, never a reply or a status
                message = json.loads(raw)
                if _kernel_ended(message):
                    why = f"kernel {self.kernel_id} shut down or died"
                    return
                waiter = self._waiters.get(message.get("parent_header", {}).get("msg_id"))
                if waiter is not None:
                    waiter.feed(message)
        except ValueError:
            pass  # not JSON: not EG; the requests waiting fail below
        finally:
            error = GatewayError(why)
            for waiter in self._waiters.values():
                waiter.fail(error)
            self._conn.close()

    def close(self) -> None:
        self._conn.close()
        self._reader.cancel()


class _ReplyWaiter:
    """Collects a request's answer and the kernel's return to idle, in either order, so the
    kernel is known idle, not "starting" or "busy" from this request, when it is done.

    The answer is the shell reply (``reply="shell"``), the data of a ``comm_msg`` or
    ``comm_close`` the kernel sent in response (``"comm"``; ``"comm?"``: or ``{}`` once it is
    idle without one), or nothing (None).
    ``answered`` gets the answer as it comes, before the idle status.
    """

    def __init__(
        self, reply: str | None = "shell", answered: asyncio.Future[ShellReply] | None = None
    ) -> None:
        self.done: asyncio.Future[ShellReply] = asyncio.get_running_loop().create_future()
        self._kind = reply
        self._answered = answered
        self._reply: dict[str, Any] | None = None if reply else {}
        self._replied_at: str | None = None
        self._idle = False

    def feed(self, message: dict[str, Any]) -> None:
        msg_type = message.get("msg_type")
        if self._kind == "shell" and message.get("channel") == "shell":
            self._replied(message, message.get("content", {}))
        elif self._kind in ("comm", "comm?") and msg_type in ("comm_msg", "comm_close"):
            self._replied(message, message.get("content", {}).get("data", {}))
        elif msg_type == "status":
            self._idle = message.get("content", {}).get("execution_state") == "idle"
            if self._idle and self._kind == "comm?" and self._reply is None:
                self._reply = {}  # idle, and no answer came before: it has no such comm
        if self._reply is not None and self._idle and not self.done.done():
            self.done.set_result(ShellReply(self._reply, self._replied_at))

    @property
    def replied(self) -> bool:
        """Whether the answer came (the request is done once the idle status came too)."""
        return self._kind is not None and self._reply is not None

    def _replied(self, message: dict[str, Any], reply: dict[str, Any]) -> None:
        self._reply = reply
        self._replied_at = message.get("header", {}).get("date")
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(ShellReply(reply, self._replied_at))

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def _kernel_ended(message: dict[str, Any]) -> bool:
    """Whether ``message`` says the kernel is shutting down or dead.

    EG keeps a kernel's websockets open after the kernel is shut down (deleted, culled), and
    they then fall silent: a request sent on one would wait for its whole timeout.
    """
    if message.get("msg_type") == "shutdown_reply":
        return True
    return (
        message.get("msg_type") == "status"
        and message.get("content", {}).get("execution_state") == "dead"
    )


def ack_quickly(conn: WebSocketClientConnection) -> None:
    """Ask Linux to acknowledge the next segment at once (TCP_QUICKACK resets after use).

    EG never sets TCP_NODELAY on kernel websockets, so after its first small frame Nagle holds
    the next ones until our ACK, which delayed ACK postpones by ~40 ms: a reply would wait.
    """
    if _TCP_QUICKACK is None or conn.protocol is None:
        return
    sock = conn.protocol.stream.socket
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass  # not a TCP socket: nothing to speed up


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _eg_reason(body: bytes | None) -> str:
    """EG's own error message from an error response body, when it sent one."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return (body or b"").decode("utf-8", "replace")[:200]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or data)
    return str(data)

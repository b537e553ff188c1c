"""Websockets to kernels through EG: the ones kept open, and the requests sent on each."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_client.jsonutil import json_default
from tornado.websocket import WebSocketClientConnection, WebSocketError

from jkp.services.gateway.answers import GatewayError, ShellReply

# The largest websocket message jkp reads, either way; tornado refuses a bigger one with close
# code 1009 from its frame header, before it buffers any of it. A client's: EG's own limit
# (tornado's default, which EG keeps), so nothing EG would take is refused. A kernel's: the
# same as Jupyter Server's gateway client, as a kernel's output is its user's to size, and one
# message must not exhaust a replica that serves every user.
MAX_WEBSOCKET_MESSAGE_BYTES = 10 * 1024 * 1024


class OpenChannels:
    """The websockets kept open to kernels, at most ``limit``, and the requests sent on them.

    ``connect(kernel_id, timeout=...)`` opens a websocket to a kernel's channels.
    """

    def __init__(
        self, connect: Callable[..., Awaitable[WebSocketClientConnection]], limit: int
    ) -> None:
        self._connect = connect
        self._limit = limit
        self._channels: dict[str, KernelChannel] = {}

    def wants(self, kernel_id: str) -> bool:
        """Whether a websocket to this kernel should be opened: none is, and there is room."""
        channel = self._channels.get(kernel_id)
        if channel is not None and not channel.closed:
            return False
        return len(self._channels) < self._limit

    def close(self, kernel_id: str) -> None:
        """Close the websocket kept open to a kernel, if any."""
        channel = self._channels.pop(kernel_id, None)
        if channel is not None:
            channel.close()

    def close_except(self, kernel_ids: set[str]) -> None:
        """Close the websockets kept open to kernels other than ``kernel_ids``."""
        for kernel_id in [k for k in self._channels if k not in kernel_ids]:
            self.close(kernel_id)

    def close_all(self) -> None:
        """Close every websocket kept open."""
        for kernel_id in list(self._channels):
            self.close(kernel_id)

    async def request(
        self,
        kernel_id: str,
        msg: dict[str, Any],
        timeout: float,
        keep_open: bool,
        reply: str | None = "shell",
        answered: asyncio.Future[ShellReply] | None = None,
        sent: asyncio.Event | None = None,
    ) -> ShellReply:
        """Send ``msg`` on the kernel's websocket, opened when none is kept; its reply (see
        KernelChannel.request). With ``keep_open`` the websocket is kept, room permitting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        channel = self._channels.pop(kernel_id, None)
        try:
            if channel is None or channel.closed:
                conn = await self._connect(kernel_id, timeout=timeout)
                channel = KernelChannel(kernel_id, conn)
            answer = await channel.request(
                msg, max(deadline - loop.time(), 0.001), reply, answered, sent
            )
        except BaseException:
            if channel is not None:
                channel.close()  # in an unknown state: never reuse it
            raise
        if keep_open and len(self._channels) < self._limit:
            self._channels[kernel_id] = channel
        else:
            channel.close()
        return answer


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

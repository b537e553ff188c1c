"""Kernels straight on EG and shell requests on their websockets: EG's floor (a kernel_info
round trip on an open websocket), jkp's set-up sent without jkp, and shutting kernels down."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from harness import KERNEL_NAME, get_json
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from localstack import EnterpriseGateway
from tornado.websocket import websocket_connect

from jkp.user import SET_UP_COMM_TARGET, WARM_UP_CODE, enter_user_dir_request


async def floor_channel(eg: EnterpriseGateway):
    """A kernel started straight on EG and a websocket kept open to it, ready for round trips."""
    model = await get_json(
        eg.url + "/api/kernels", "POST", {"name": KERNEL_NAME, "env": {"KERNEL_USERNAME": "jovyan"}}
    )
    conn = await websocket_connect(
        eg.url.replace("http", "ws", 1) + f"/api/kernels/{model['id']}/channels"
    )
    deadline = time.monotonic() + 60
    while await kernel_info_round_trip(conn, 1.0) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"floor kernel {model['id']} not ready after 60s")
    return model["id"], conn


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def quickack(conn) -> None:
    """Re-arm TCP_QUICKACK on a websocket client's socket before a read, as jkp does (EG never
    sets TCP_NODELAY, so without it a reply may wait ~40 ms for our delayed ACK)."""
    sock = conn.protocol.stream.socket if conn.protocol else None
    if _TCP_QUICKACK is not None and sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


_SESSION = Session(username="bench")


async def shell_request(conn, msg_type: str, content: dict, wait: float, until_idle: bool = False):
    """Send one shell request on an open kernel websocket: (seconds from sending it to its
    reply, the reply's content), re-arming TCP_QUICKACK before each read. With
    ``until_idle``, a third item: seconds until the kernel's idle status after it (ipykernel
    flushes its output streams between the reply and that status). None after ``wait``
    seconds."""
    reply_type = msg_type.removesuffix("_request") + "_reply"
    contents: dict[str, dict] = {}
    sent = await send_shell(conn, msg_type, content)
    wanted = {reply_type, "idle"} if until_idle else {reply_type}
    try:
        seen = await asyncio.wait_for(answers(conn, sent, wanted, contents), wait)
    except asyncio.TimeoutError:
        return None
    replied = seen[reply_type], contents[reply_type]
    return (*replied, seen["idle"]) if until_idle else replied


async def kernel_info_round_trip(conn, wait: float) -> float | None:
    """Seconds from sending a kernel_info_request on an open websocket to its reply, re-arming
    TCP_QUICKACK before each read as jkp does (EG never sets TCP_NODELAY): the least any
    request through EG costs here. None after ``wait`` seconds."""
    answer = await shell_request(conn, "kernel_info_request", {}, wait)
    return None if answer is None else answer[0]


async def floor_round_trip(conn, wait: float) -> tuple[float, float] | None:
    """EG's floor (kernel_info_round_trip), and the seconds until the kernel's idle status
    after it: a pop ends there, since jkp answers only once the kernel is idle again. None
    after ``wait`` seconds."""
    answer = await shell_request(conn, "kernel_info_request", {}, wait, until_idle=True)
    return None if answer is None else (answer[0], answer[2])


async def send_shell(conn, msg_type: str, content: dict) -> tuple[str, float]:
    """Send a shell request on an open kernel websocket: its msg_id and when it was sent."""
    msg = _SESSION.msg(msg_type, content)
    msg["channel"] = "shell"
    started = time.perf_counter()
    await conn.write_message(json.dumps(msg, default=json_default))
    return msg["header"]["msg_id"], started


async def answers(
    conn, sent: tuple[str, float], wanted: set[str], contents: dict[str, dict] | None = None
) -> dict[str, float]:
    """Seconds from sending the request ``sent`` to each of ``wanted`` among the messages
    answering it (message types; ``idle`` for the kernel's idle status), re-arming
    TCP_QUICKACK before each read. ``contents``, when given, gets each one's content."""
    msg_id, started = sent
    seen: dict[str, float] = {}
    while len(seen) < len(wanted):
        quickack(conn)
        raw = await conn.read_message()
        if raw is None:
            raise RuntimeError("the kernel's websocket closed")
        message = json.loads(raw) if isinstance(raw, str) else {}
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "status":
            kind = message["content"]["execution_state"]
        if kind in wanted and kind not in seen:
            seen[kind] = time.perf_counter() - started
            if contents is not None:
                contents[kind] = message["content"]
    return seen


async def arm_set_up(conn, comm_id: str) -> None:
    """Install jkp's set-up in a kernel straight on EG, as jkp's warm-up does, and open its
    comm as ``comm_id``: the kernel then takes one set-up, as a pooled kernel does."""
    warm_up = {"code": WARM_UP_CODE, "silent": True, "store_history": False}
    await answers(conn, await send_shell(conn, "execute_request", warm_up), {"idle"})
    comm = {"comm_id": comm_id, "target_name": SET_UP_COMM_TARGET, "data": {}}
    await answers(conn, await send_shell(conn, "comm_open", comm), {"idle"})


async def straight_set_up(conn, comm_id: str, shared: Path, user: str) -> dict[str, float]:
    """jkp's set-up for ``user`` sent straight to EG on an armed kernel, without jkp: seconds
    to its answer (``comm_close``) and to the kernel's idle status."""
    set_up = {"comm_id": comm_id, "data": enter_user_dir_request(str(shared), user)}
    return await answers(conn, await send_shell(conn, "comm_msg", set_up), {"comm_close", "idle"})


class ShellChannel:
    """An open kernel websocket whose reader keeps it drained: it resolves shell replies and
    drops the rest at once, so what the kernel broadcasts on iopub (also for requests made on
    other websockets to it) never queues in front of a reply. TCP_QUICKACK is re-armed before
    each read."""

    def __init__(self, conn):
        self.conn = conn
        self.waiting: dict[str, asyncio.Future] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            quickack(self.conn)
            raw = await self.conn.read_message()
            if raw is None:
                for future in self.waiting.values():
                    if not future.done():
                        future.set_exception(RuntimeError("the kernel's websocket closed"))
                return
            answer = json.loads(raw) if isinstance(raw, str) else {}
            if answer.get("channel") == "shell":
                future = self.waiting.pop(answer.get("parent_header", {}).get("msg_id"), None)
                if future is not None and not future.done():
                    future.set_result(answer.get("content"))

    async def kernel_info(self, wait: float) -> float:
        """Seconds from sending a kernel_info_request to its reply."""
        msg = _SESSION.msg("kernel_info_request", {})
        msg["channel"] = "shell"
        future = self.waiting[msg["header"]["msg_id"]] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        await self.conn.write_message(json.dumps(msg, default=json_default))
        await asyncio.wait_for(future, wait)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.reader.cancel()
        self.conn.close()


def ws_url(url: str, kernel_id: str) -> str:
    return url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"


async def delete_kernels(eg: EnterpriseGateway, ids: list[str]) -> None:
    """Shut handed-out kernels down on EG (a few at a time, via threads) to free memory."""
    sem = asyncio.Semaphore(8)

    async def delete(kernel_id: str) -> None:
        async with sem:
            status, body = await asyncio.to_thread(
                eg.request, "DELETE", f"/api/kernels/{kernel_id}", None, 60
            )
        if status not in (204, 404):
            raise RuntimeError(f"DELETE kernel {kernel_id}: {status} {body}")

    await asyncio.gather(*(delete(k) for k in ids))

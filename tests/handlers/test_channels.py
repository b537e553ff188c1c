"""A kernel's websocket through jkp: bridged to EG's frame for frame, both ways.

Real Redis, real EG, real ipykernel kernels, served warm and bound to the client's id.
"""

import asyncio
import json
import os
import signal
import struct
import uuid

import pytest
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import run_in_kernel, wait_until


@pytest.fixture
async def bound(redis_server, gateway, jkp_factory, shared_dir):
    """jkp, EG, and a kernel created warm through jkp as KERNEL_ID ``kernel_id``."""
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=1")
    await jkp.wait_for_idle(1)
    kernel_id = str(uuid.uuid4())
    env = {
        "KERNEL_USERNAME": "alice",
        "KERNEL_ID": kernel_id,
        "KERNEL_WORKING_DIR": str(shared_dir / "alice"),
        "KERNEL_FOO": "bar",
    }
    status, model = await jkp.request("POST", "/api/kernels", json.dumps({"env": env}))
    assert status == 201, model
    return jkp, gateway, kernel_id


class Client:
    """A kernel client on one websocket: sends requests, collects what comes back."""

    def __init__(self, conn):
        self.conn = conn
        self.session = Session(username="test-client")

    @classmethod
    async def connect(cls, base_url, kernel_id, **options):
        url = base_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        return cls(await websocket_connect(HTTPRequest(url, **options), max_message_size=1 << 26))

    def message(self, msg_type, content, channel="shell"):
        msg = self.session.msg(msg_type, content)
        msg["channel"] = channel
        return msg

    async def send(self, msg, buffers=()):
        if buffers:
            await self.conn.write_message(_binary(msg, buffers), binary=True)
        else:
            await self.conn.write_message(json.dumps(msg, default=json_default))
        return msg["header"]["msg_id"]

    async def execute(self, code):
        content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}}
        return await self.send(self.message("execute_request", content))

    async def replies(self, msg_id, timeout=30, reply_expected=True):
        """Every message answering ``msg_id`` (frames decoded), up to its reply (when one is
        expected: a comm message has none) and idle."""
        got, reply, idle = [], None if reply_expected else True, False
        async with asyncio.timeout(timeout):
            while reply is None or not idle:
                frame = await self.conn.read_message()
                assert frame is not None, "websocket closed"
                msg, buffers = _decode(frame)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                got.append((msg, buffers, isinstance(frame, bytes)))
                if msg["msg_type"].endswith("_reply"):
                    reply = msg
                elif msg["msg_type"] == "status":
                    idle = msg["content"]["execution_state"] == "idle"
        return got

    async def until_running(self, msg_id, timeout=10):
        """Read until the kernel announces it runs request ``msg_id`` (its execute_input)."""
        async with asyncio.timeout(timeout):
            while True:
                msg, _ = _decode(await self.conn.read_message())
                parent = msg["parent_header"].get("msg_id")
                if parent == msg_id and msg["msg_type"] == "execute_input":
                    return

    async def run(self, code):
        """stdout and the execute_reply's content."""
        got = await self.replies(await self.execute(code))
        out = "".join(m["content"]["text"] for m, _, _ in got if m["msg_type"] == "stream")
        (reply,) = [m["content"] for m, _, _ in got if m["msg_type"] == "execute_reply"]
        return out, reply


def _binary(msg, buffers):
    """Jupyter's websocket binary frame: count, offsets, the JSON message, its buffers."""
    parts = [json.dumps(msg, default=json_default).encode(), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def _decode(frame):
    if isinstance(frame, str):
        return json.loads(frame), []
    (count,) = struct.unpack("!I", frame[:4])
    offsets = [*struct.unpack(f"!{count}I", frame[4 : 4 * (count + 1)]), len(frame)]
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(count)]
    return json.loads(parts[0]), parts[1:]


async def test_a_10_mb_output_comes_through_whole(bound):
    jkp, _, kernel_id = bound
    client = await Client.connect(jkp.url, kernel_id)
    try:
        out, reply = await client.run("print('x' * 10_000_000)")
    finally:
        client.conn.close()
    assert reply["status"] == "ok"
    assert out == "x" * 10_000_000 + "\n"


async def test_binary_buffers_go_both_ways(bound):
    jkp, _, kernel_id = bound
    client = await Client.connect(jkp.url, kernel_id)
    try:
        # The kernel echoes a comm's buffers back on a comm of its own.
        _, reply = await client.run(
            "def _echo(comm, msg):\n"
            "    comm.send({'sizes': [len(b) for b in msg['buffers']]}, "
            "buffers=msg['buffers'])\n"
            "get_ipython().kernel.comm_manager.register_target('jkp_echo', _echo)"
        )
        assert reply["status"] == "ok"
        payload = bytes(range(256)) * 40
        content = {"comm_id": uuid.uuid4().hex, "target_name": "jkp_echo", "data": {}}
        msg_id = await client.send(client.message("comm_open", content), buffers=[payload])
        got = await client.replies(msg_id, reply_expected=False)
    finally:
        client.conn.close()
    (echo,) = [(m, b, binary) for m, b, binary in got if m["msg_type"] == "comm_msg"]
    msg, buffers, binary = echo
    assert binary and buffers == [payload]
    assert msg["content"]["data"] == {"sizes": [len(payload)]}


async def test_interrupt_and_restart_through_jkp_keep_the_kernel_bound(bound, shared_dir):
    jkp, _, kernel_id = bound
    client = await Client.connect(jkp.url, kernel_id)
    try:
        msg_id = await client.execute("import time; time.sleep(60)")
        # Interrupted only once the execute runs: EG's model may still show the kernel busy
        # with the kernel_info EG sends on every websocket open.
        await client.until_running(msg_id)
        status, _ = await jkp.request("POST", f"/api/kernels/{kernel_id}/interrupt", b"")
        assert status == 204
        (reply,) = [
            m for m, _, _ in await client.replies(msg_id) if m["msg_type"].endswith("reply")
        ]
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        status, model = await jkp.request("POST", f"/api/kernels/{kernel_id}/restart", b"")
        assert status == 200 and model["id"] == kernel_id
    finally:
        client.conn.close()
    # A restart starts the kernel's process afresh; jkp binds it again before it answers.
    out = await run_in_kernel(
        jkp, kernel_id, "import os; print(os.getcwd(), os.environ['KERNEL_FOO'], 'time' in dir())"
    )
    assert out.split() == [str(shared_dir / "alice"), "bar", "False"]


async def test_the_clients_disconnect_closes_the_upstream(bound):
    jkp, gateway, kernel_id = bound
    binding = await jkp.app.kernels.binding(kernel_id)
    upstream = binding["kernel_id"]

    def connections():
        return gateway.request("GET", f"/api/kernels/{upstream}")[1]["connections"]

    client = await Client.connect(jkp.url, kernel_id)
    await wait_until(lambda: connections() == 1, 10, "EG to count the bridged websocket")
    client.conn.close()
    await wait_until(lambda: connections() == 0, 10, "EG to see the websocket closed")


async def test_eg_s_refusal_of_a_websocket_reaches_the_client(bound):
    jkp, _, _ = bound
    url = jkp.url.replace("http", "ws", 1) + f"/api/kernels/{uuid.uuid4()}/channels"
    with pytest.raises(Exception) as refused:
        await websocket_connect(url)
    assert getattr(refused.value, "code", None) == 404


async def test_the_kernels_first_messages_reach_a_client_that_reads_late(bound):
    """EG's kernel_info on connect (busy, idle) waits in the bridge for the client."""
    jkp, _, kernel_id = bound
    client = await Client.connect(jkp.url, kernel_id)
    try:
        await asyncio.sleep(0.5)  # the client is slow to read: nothing may be lost meanwhile
        states = []
        async with asyncio.timeout(10):
            while states[-2:] != ["busy", "idle"]:
                msg, _ = _decode(await client.conn.read_message())
                if msg["msg_type"] == "status":
                    states.append(msg["content"]["execution_state"])
    finally:
        client.conn.close()


async def test_a_websocket_route_asked_with_another_method_is_a_json_405(bound):
    jkp, _, kernel_id = bound
    status, error = await jkp.request("POST", f"/api/kernels/{kernel_id}/channels", b"{}")
    assert status == 405
    assert set(error) == {"message", "reason"}


def _v1_frame(channel, msg):
    """A message in Jupyter's v1 websocket protocol: offsets, channel, then its JSON parts."""
    parts = [
        json.dumps(msg[k], default=json_default).encode()
        for k in ("header", "parent_header", "metadata", "content")
    ]
    offsets = [8 * (1 + 1 + len(parts) + 1), 8 * (1 + 1 + len(parts) + 1) + len(channel)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = b"".join(n.to_bytes(8, "little") for n in (len(offsets), *offsets))
    return head + channel.encode() + b"".join(parts)


def _v1_parts(frame):
    """The channel and the decoded header, parent header, metadata and content of a v1 frame."""
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    channel = frame[offsets[0] : offsets[1]].decode()
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, min(count - 1, 5))]
    return channel, [json.loads(part) for part in parts]


async def test_jupyters_v1_websocket_protocol_is_bridged_as_eg_selects_it(bound):
    """A client offering the v1 websocket protocol (as Jupyter Server 2 does) gets EG's choice
    through jkp, as it would straight from EG, and speaks it to the kernel through jkp."""
    jkp, gateway, kernel_id = bound
    upstream = (await jkp.app.kernels.binding(kernel_id))["kernel_id"]
    offered = ["v1.kernel.websocket.jupyter.org"]
    straight = await websocket_connect(
        gateway.url.replace("http", "ws", 1) + f"/api/kernels/{upstream}/channels",
        subprotocols=offered,
    )
    through = await websocket_connect(
        jkp.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels",
        subprotocols=offered,
    )
    try:
        assert straight.selected_subprotocol == offered[0]  # EG 3.3's jupyter_server 1.24
        assert through.selected_subprotocol == straight.selected_subprotocol
        request = Session(username="test-client").msg("kernel_info_request", {})
        await through.write_message(_v1_frame("shell", request), binary=True)
        async with asyncio.timeout(30):
            while True:
                frame = await through.read_message()
                assert isinstance(frame, bytes), frame
                channel, (header, parent, _, content) = _v1_parts(frame)
                if parent.get("msg_id") == request["header"]["msg_id"] and channel == "shell":
                    break
        assert header["msg_type"] == "kernel_info_reply" and content["status"] == "ok"
    finally:
        straight.close()
        through.close()


TEN_MIB = 10 * 1024 * 1024


class RawWebSocket:
    """A client websocket spoken byte by byte, so a test can send a frame's header alone."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, base_url, kernel_id):
        host, port = base_url.split("://", 1)[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            (
                f"GET /api/kernels/{kernel_id}/channels HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def frame_header(self, length, opcode=0x1, final=True):
        """A masked frame's header claiming ``length`` bytes; the mask is zero, so the payload
        goes as it is."""
        first = (0x80 if final else 0) | opcode
        return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"

    async def close_code(self, timeout=10):
        """The code of the close frame the server sends, skipping the frames before it."""
        async with asyncio.timeout(timeout):
            while True:
                first, second = await self.reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(length)
                if first & 0x0F == 0x8:
                    return struct.unpack("!H", payload[:2])[0]

    def close(self):
        self.writer.close()


async def test_a_client_frame_over_10_mib_is_refused_with_1009_from_its_header(bound):
    jkp, _, kernel_id = bound
    for _ in range(3):  # as the replica's memory grew by 301 MB for three 200 MiB frames
        raw = await RawWebSocket.connect(jkp.url, kernel_id)
        try:
            # The header alone: a bridge that buffered the frame would wait for its payload.
            raw.writer.write(raw.frame_header(200 * 1024 * 1024))
            assert await raw.close_code() == 1009
        finally:
            raw.close()
    # The kernel is still there for the client's next connection.
    client = await Client.connect(jkp.url, kernel_id)
    try:
        out, _ = await client.run("print('still here')")
    finally:
        client.conn.close()
    assert out == "still here\n"


async def test_a_fragmented_client_message_over_10_mib_is_refused_with_1009(bound):
    jkp, _, kernel_id = bound
    raw = await RawWebSocket.connect(jkp.url, kernel_id)
    try:
        first = 6 * 1024 * 1024
        raw.writer.write(raw.frame_header(first, final=False) + b"x" * first)
        raw.writer.write(raw.frame_header(TEN_MIB - first + 1, opcode=0x0))
        assert await raw.close_code() == 1009
    finally:
        raw.close()


async def test_a_client_frame_of_10_mib_reaches_the_kernel_and_one_byte_more_does_not(
    bound, shared_dir
):
    jkp, _, kernel_id = bound
    client = await Client.connect(jkp.url, kernel_id)
    try:
        msg = client.message("execute_request", {"code": "print('took it')", "silent": False})
        msg["metadata"]["padding"] = ""
        size = len(json.dumps(msg, default=json_default).encode())
        msg["metadata"]["padding"] = "p" * (TEN_MIB - size)
        frame = json.dumps(msg, default=json_default)
        assert len(frame.encode()) == TEN_MIB
        await client.conn.write_message(frame)
        got = await client.replies(msg["header"]["msg_id"])
    finally:
        client.conn.close()
    assert [m["content"]["text"] for m, _, _ in got if m["msg_type"] == "stream"] == ["took it\n"]
    raw = await RawWebSocket.connect(jkp.url, kernel_id)
    try:
        raw.writer.write(raw.frame_header(TEN_MIB + 1))
        assert await raw.close_code() == 1009
    finally:
        raw.close()


async def test_a_kernel_message_over_10_mib_closes_the_clients_websocket(bound):
    jkp, _, kernel_id = bound
    client = await Client.connect(jkp.url, kernel_id)
    try:
        await client.execute(f"print('x' * {TEN_MIB + 1})")
        async with asyncio.timeout(30):
            while (frame := await client.conn.read_message()) is not None:
                msg, _ = _decode(frame)
                assert msg["msg_type"] != "stream", "the oversized output came through"
    finally:
        client.conn.close()


async def _connect_twice_while_eg_is_stopped(gateway, first_url, second_url):
    """Begin a websocket to ``first_url`` and one to ``second_url`` while EG's process is
    stopped, so both handshakes reach EG in the same loop turn when it resumes (as when EG
    is busy launching a kernel); the first is left unanswered, as Jupyter Server leaves the
    one Chromium rejected. The second connection, once open."""
    os.kill(gateway.pid, signal.SIGSTOP)
    try:
        first = asyncio.ensure_future(websocket_connect(first_url))
        await asyncio.sleep(0.15)
        second = asyncio.ensure_future(websocket_connect(second_url))
        await asyncio.sleep(0.15)
    finally:
        os.kill(gateway.pid, signal.SIGCONT)
    try:
        async with asyncio.timeout(10):
            return Client(await second)
    finally:
        first.add_done_callback(lambda f: f.exception() or f.result().close())


async def _kernel_info(client, timeout=5):
    msg_id = await client.send(client.message("kernel_info_request", {}))
    got = await client.replies(msg_id, timeout)
    (reply,) = [m for m, _, _ in got if m["msg_type"] == "kernel_info_reply"]
    return reply


def _channels_url(jkp, kernel_id, session_id):
    base = jkp.url.replace("http", "ws", 1)
    return f"{base}/api/kernels/{kernel_id}/channels?session_id={session_id}"


async def test_a_second_websocket_of_the_same_session_never_waits_on_the_first(bound):
    """Lab retries a websocket Chromium rejected with the same session_id while Jupyter
    Server leaves its first one towards the gateway open: the retry must answer at once."""
    jkp, gateway, kernel_id = bound
    url = _channels_url(jkp, kernel_id, uuid.uuid4())
    client = await _connect_twice_while_eg_is_stopped(gateway, url, url)
    try:
        reply = await _kernel_info(client)
    finally:
        client.conn.close()
    assert reply["content"]["status"] == "ok"


async def test_a_second_websocket_of_the_same_session_on_another_replica_never_waits(
    bound, redis_server, jkp_factory
):
    jkp, gateway, kernel_id = bound
    other = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=0")
    session_id = uuid.uuid4()
    client = await _connect_twice_while_eg_is_stopped(
        gateway,
        _channels_url(jkp, kernel_id, session_id),
        _channels_url(other, kernel_id, session_id),
    )
    try:
        reply = await _kernel_info(client)
    finally:
        client.conn.close()
    assert reply["content"]["status"] == "ok"


async def test_an_open_websocket_is_closed_by_a_newer_one_of_its_session_on_any_replica(
    bound, redis_server, jkp_factory
):
    jkp, gateway, kernel_id = bound
    other = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=0")
    session_id = uuid.uuid4()
    first = await websocket_connect(_channels_url(jkp, kernel_id, session_id))
    second = await websocket_connect(_channels_url(other, kernel_id, session_id))
    third = Client(await websocket_connect(_channels_url(jkp, kernel_id, session_id)))
    try:
        for replaced in (first, second):
            async with asyncio.timeout(5):
                while await replaced.read_message() is not None:
                    pass
            assert replaced.close_code == 1000
            assert "newer connection of the same kernel and session" in replaced.close_reason
        assert (await _kernel_info(third))["content"]["status"] == "ok"
    finally:
        third.conn.close()


async def test_output_sent_while_a_session_was_away_reaches_it_when_it_connects_again(bound):
    """EG keeps what the kernel sends while a session has no websocket, and replays it when
    the same session connects again (Lab after a network blip): jkp keeps that."""
    jkp, gateway, kernel_id = bound
    upstream = (await jkp.app.kernels.binding(kernel_id))["kernel_id"]
    url = _channels_url(jkp, kernel_id, uuid.uuid4())
    client = Client(await websocket_connect(url))
    msg_id = await client.execute("import time; time.sleep(2); print('while away')")
    await client.until_running(msg_id)
    client.conn.close()

    def connections():
        return gateway.request("GET", f"/api/kernels/{upstream}")[1]["connections"]

    await wait_until(lambda: connections() == 0, 2, "the session to be away before the print")
    again = Client(await websocket_connect(url))
    try:
        got = await again.replies(msg_id, timeout=10)
    finally:
        again.conn.close()
    assert [m["content"]["text"] for m, _, _ in got if m["msg_type"] == "stream"] == [
        "while away\n"
    ]

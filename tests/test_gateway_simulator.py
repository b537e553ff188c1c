"""bench/gateway_simulator.py (benchmarks only) starts kernels as slowly as it is told."""

import importlib.util
import json
import time
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.websocket import websocket_connect

from tests.conftest import wait_until

_PATH = Path(__file__).resolve().parent.parent / "bench" / "gateway_simulator.py"
_spec = importlib.util.spec_from_file_location("gateway_simulator", _PATH)
simulator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(simulator)

START_LATENCY = 0.5


@pytest.fixture
async def slow_simulator():
    sim = simulator.Simulator("python_kubernetes", 0, 0, start_latency=START_LATENCY)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(simulator.make_app(sim, simulator.Stats(1.0)))
    server.add_sockets(sockets)
    yield sim, f"127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()
    for kernel_id in list(sim.kernels):
        sim.remove(kernel_id)


async def _comm_msg(ws, comm_id: str, data: dict) -> None:
    """Send a comm_msg and wait for the simulator's answer on that comm."""
    header = {"msg_id": uuid.uuid4().hex, "msg_type": "comm_msg", "session": "s",
              "username": "u", "version": "5.3"}  # fmt: skip
    message = {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell",
               "content": {"comm_id": comm_id, "data": data}}  # fmt: skip
    await ws.write_message(json.dumps(message))
    while True:
        reply = json.loads(await ws.read_message())
        if reply["msg_type"] == "comm_msg":
            return


async def test_a_create_answers_once_the_start_latency_passed_and_the_kernel_is_unknown_until_then(
    slow_simulator,
):
    sim, host = slow_simulator
    client = AsyncHTTPClient(force_instance=True)
    kernel_id = str(uuid.uuid4())
    body = {"name": "python_kubernetes", "env": {"KERNEL_ID": kernel_id, "KERNEL_USERNAME": "u"}}
    started = time.monotonic()
    create = client.fetch(
        HTTPRequest(f"http://{host}/api/kernels", method="POST", body=json.dumps(body))
    )
    await wait_until(lambda: kernel_id in sim.starting, 5, "the start to begin")

    with pytest.raises(HTTPClientError) as e:
        await client.fetch(f"http://{host}/api/kernels/{kernel_id}")
    assert e.value.code == 404
    with pytest.raises(HTTPClientError) as e:
        await websocket_connect(f"ws://{host}/api/kernels/{kernel_id}/channels")
    assert e.value.code == 404

    response = await create
    assert response.code == 201
    assert time.monotonic() - started >= START_LATENCY
    assert json.loads(response.body)["id"] == kernel_id
    ws = await websocket_connect(f"ws://{host}/api/kernels/{kernel_id}/channels")
    await _comm_msg(ws, "c", {"probe": True})  # jkp's warm-up: pooled
    await _comm_msg(ws, "c", {"base": "/w", "target": "u"})  # a pop's set-up: handed out
    ws.close()

    lives = json.loads((await client.fetch(f"http://{host}/bench/kernels")).body)["kernels"]
    (life,) = lives
    assert life["ready"] - life["requested"] >= START_LATENCY
    assert life["ready"] <= life["pooled"] <= life["handed_out"]
    assert life["deleted"] is None
    client.close()

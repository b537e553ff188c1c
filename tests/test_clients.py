"""Real clients of EG's kernels API against jkp as their gateway: pybox (the sandbox of
tablegpt-agent) and Jupyter Server 2 started with ``--gateway-url``.

Real Redis, real EG, real ipykernel kernels, as in tests/handlers/test_kernels.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid

import pytest
from pybox.remote import RemotePyBoxManager
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.conftest import localstack, run_in_kernel, wait_until

KERNEL_NAME = "python_kubernetes"


@pytest.fixture
async def stack(redis_server, gateway, jkp_factory):
    """A jkp with a pool of 2 in front of a real EG, without a token (pybox sends none)."""
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=2")
    await jkp.wait_for_idle(2)
    return jkp, gateway


# -- pybox --------------------------------------------------------------------------------


async def test_pybox_gets_a_pooled_kernel_by_its_id_and_gets_it_again_on_a_second_start(
    stack, shared_dir, caplog
):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    manager = RemotePyBoxManager(
        host=jkp.url, kernel_env={"KERNEL_USERNAME": "alice", "KERNEL_FOO": "bar"}
    )
    kernel_id = str(uuid.uuid4())
    workdir = shared_dir / "alice"

    box = await asyncio.to_thread(manager.start, kernel_id=kernel_id, cwd=str(workdir))

    assert box.kernel_id == kernel_id
    (bound,) = pooled - set(await jkp.idle_ids())
    upstream = set(gateway.list_kernel_ids())
    assert bound in upstream and kernel_id not in upstream
    assert jkp.logged(f"Create served warm: kernel {bound} as {kernel_id}")
    out = await asyncio.to_thread(
        box.run, "import os; print(os.getcwd(), os.environ['KERNEL_FOO']); state = 41"
    )
    assert out.error is None
    assert out.data == [{"text/plain": f"{workdir} bar\n"}]

    # pybox's create is answered 409 "Kernel already exists: ..." and it then GETs the kernel.
    again = await asyncio.to_thread(manager.start, kernel_id=kernel_id)

    assert again.kernel_id == kernel_id
    out = await asyncio.to_thread(again.run, "print(state + 1)")
    assert out.error is None and out.data == [{"text/plain": "42\n"}]
    assert len(jkp.logged("Create served warm")) == 1
    assert not jkp.logged("Create started cold")

    # pybox swallows (and logs) what goes wrong while it reads the kernel's first messages.
    assert not [
        r for r in caplog.records if r.name == "pybox.remote" and r.levelno >= logging.WARNING
    ]

    await asyncio.to_thread(manager.shutdown, kernel_id)

    assert bound not in gateway.list_kernel_ids()
    status, _ = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 404


# -- Jupyter Server 2 ---------------------------------------------------------------------


class JupyterServer:
    """``jupyter server --gateway-url=<jkp>`` in a process of its own; as run_in_kernel
    wants a gateway: ``url`` and ``auth_token``."""

    def __init__(self, proc: subprocess.Popen, url: str, auth_token: str, log_path):
        self.proc = proc
        self.url = url
        self.auth_token = auth_token
        self.log_path = log_path

    async def request(self, method, path, body=None):
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(
                self.url + path,
                method=method,
                body=None if body is None else json.dumps(body),
                headers={"Authorization": f"token {self.auth_token}"},
                allow_nonstandard_methods=True,
                request_timeout=60,
            ),
            raise_error=False,
        )
        return response.code, json.loads(response.body) if response.body else None

    async def answers(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"jupyter server exited ({self.proc.returncode}):\n{self.log()}")
        try:
            status, _ = await self.request("GET", "/api/status")
        except OSError:
            return False
        return status == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, timeout=20) -> int:
        """SIGTERM, as a clean stop; its exit code. Waits without blocking the loop: the
        server shuts its kernels down through jkp, which runs in it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: self.proc.poll() is not None, timeout, "jupyter server to exit")
        return self.proc.returncode


@pytest.fixture
def jupyter_server_factory(tmp_path):
    """Start Jupyter Servers in front of a gateway: ``make(gateway_url, root_dir)``; the
    server's environment has KERNEL_USERNAME=alice and no other KERNEL_* variable."""
    started: list[JupyterServer] = []

    async def make(gateway_url, root_dir) -> JupyterServer:
        n = len(started)
        home = tmp_path / f"jupyter-server{n}"
        home.mkdir()
        port = localstack.free_port()
        token = f"js-t0ken-{n}"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "IPYTHONDIR": str(home / "ipython"),
            # Jupyter Server's gateway client sends each KERNEL_* variable of its environment.
            "KERNEL_USERNAME": "alice",
        }
        log_path = home / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jupyter_server",
                    f"--gateway-url={gateway_url}",
                    f"--IdentityProvider.token={token}",
                    "--ip=127.0.0.1",
                    f"--port={port}",
                    "--ServerApp.port_retries=0",
                    "--no-browser",
                    "--allow-root",
                    f"--ServerApp.root_dir={root_dir}",
                ],
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = JupyterServer(proc, f"http://127.0.0.1:{port}", token, log_path)
        started.append(server)
        await wait_until(server.answers, 30, "jupyter server to answer")
        return server

    yield make
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


async def test_jupyter_server_gets_pooled_kernels_in_its_root_on_the_share(
    stack, shared_dir, jupyter_server_factory
):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    root = shared_dir / "alice"
    (root / "project").mkdir(parents=True)
    server = await jupyter_server_factory(jkp.url, root)

    # A notebook in a folder of the server's root: the server sends that folder as
    # KERNEL_WORKING_DIR, a directory of the share.
    status, model = await server.request(
        "POST", "/api/kernels", {"name": KERNEL_NAME, "path": "project/analysis.ipynb"}
    )

    assert status == 201, model
    kernel_id = model["id"]
    assert kernel_id in pooled  # jkp's id for it, the pooled kernel's (no KERNEL_ID sent)
    assert jkp.logged(f"Create served warm: kernel {kernel_id} as {kernel_id}")
    assert not jkp.logged("Create started cold") and not jkp.logged("Create not served warm")
    status, known = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 200 and known["id"] == kernel_id
    out = await run_in_kernel(server, kernel_id, "import os; print(os.getcwd()); print(6*7)")
    assert out.splitlines() == [str(root / "project"), "42"]

    # No path: the server sends no KERNEL_WORKING_DIR; the other pooled kernel, not moved.
    status, other = await server.request("POST", "/api/kernels", {"name": KERNEL_NAME})

    assert status == 201, other
    assert other["id"] in pooled - {kernel_id}
    out = await run_in_kernel(server, other["id"], "print(6*7)")
    assert out.strip() == "42"
    assert not jkp.logged("Create started cold")
    status, listed = await server.request("GET", "/api/kernels")
    assert status == 200 and {m["id"] for m in listed} == {kernel_id, other["id"]}

    # A clean stop shuts the server's kernels down through jkp.
    assert await server.stop() == 0
    upstream = set(gateway.list_kernel_ids())
    for shut in (kernel_id, other["id"]):
        assert shut not in upstream
        status, _ = await jkp.request("GET", f"/api/kernels/{shut}")
        assert status == 404
    assert (await jkp.store.counts())["handed"] == 0


async def test_jupyter_server_kernel_whose_folder_is_outside_the_share_is_started_cold_by_eg(
    stack, tmp_path, jupyter_server_factory
):
    """A notebook at the root of a server whose root is outside the share: no pooled kernel
    can be moved to its KERNEL_WORKING_DIR; EG starts one there, as it would without jkp."""
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    root = tmp_path / "elsewhere"
    root.mkdir()
    server = await jupyter_server_factory(jkp.url, root)

    status, model = await server.request(
        "POST", "/api/kernels", {"name": KERNEL_NAME, "path": "analysis.ipynb"}
    )

    assert status == 201, model
    assert model["id"] not in pooled and model["id"] in gateway.list_kernel_ids()
    assert set(await jkp.idle_ids()) == pooled
    assert jkp.logged(f"Create started cold by EG: its working directory '{root}' is not in")
    # EG's kernel gets the folder as KERNEL_WORKING_DIR (a pod would start in it; the test
    # EG's local kernels do not).
    out = await run_in_kernel(
        server, model["id"], "import os; print(os.environ['KERNEL_WORKING_DIR']); print(6*7)"
    )
    assert out.splitlines() == [str(root), "42"]

    assert await server.stop() == 0
    assert model["id"] not in gateway.list_kernel_ids()


async def test_jupyter_server_rooted_at_the_share_gets_warm_kernels_there(
    stack, shared_dir, jupyter_server_factory
):
    jkp, _ = stack
    pooled = set(await jkp.idle_ids())
    server = await jupyter_server_factory(jkp.url, shared_dir)
    status, model = await server.request(
        "POST", "/api/kernels", {"name": KERNEL_NAME, "path": "analysis.ipynb"}
    )
    assert status == 201, model
    assert model["id"] in pooled
    out = await run_in_kernel(server, model["id"], "import os; print(os.getcwd())")
    assert out.strip() == str(shared_dir)
    assert await server.stop() == 0

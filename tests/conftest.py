"""Fixtures that spawn real servers (redis-server, Enterprise Gateway) on 127.0.0.1.

They come from dev/localstack.py. Nothing is skipped: when redis-server or
.venv-eg is missing the test fails and says to run scripts/bootstrap.

* ``redis_server``: a started RedisServer (fresh, in tmp_path), stopped after.
* ``redis_factory(**kwargs)``: more of them, e.g. ``redis_factory(appendonly=True)``.
* ``sentinel_set``: a Redis master, its replica and three sentinels (RedisSentinelSet).
* ``gateway``: a started EnterpriseGateway for this test only (the test may
  stop/kill/restart it), stopped after.
* ``gateway_factory(**kwargs)``: start gateways with other settings, e.g.
  ``gateway_factory(cull_idle_timeout=4, cull_interval=1)``; all stopped after.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "dev"))

import localstack  # noqa: E402
from localstack import EnterpriseGateway, RedisSentinelSet, RedisServer  # noqa: E402,F401


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH: run scripts/bootstrap", pytrace=False)


def _require_eg() -> None:
    exe = localstack.DEFAULT_EG_VENV / "bin" / "jupyter-enterprisegateway"
    if not exe.exists():
        pytest.fail(
            f"Enterprise Gateway venv missing ({exe}): run scripts/bootstrap", pytrace=False
        )


def _stop_all(servers) -> None:
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as e:  # keep stopping the others
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def redis_factory(tmp_path):
    _require_redis_server()
    started: list[RedisServer] = []

    def make(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", **kwargs)
        started.append(server)
        return server.start()

    yield make
    _stop_all(started)


@pytest.fixture
def redis_server(redis_factory) -> RedisServer:
    return redis_factory()


@pytest.fixture
def sentinel_set(tmp_path) -> RedisSentinelSet:
    """A started Redis master, its replica and three sentinels naming it ``jkp``, with
    passwords (the servers' ``redis-pw``, the sentinels' ``sentinel-pw``); stopped after."""
    _require_redis_server()
    servers = RedisSentinelSet(
        tmp_path / "sentinel-set", password="redis-pw", sentinel_password="sentinel-pw"
    )
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.fixture
def gateway_factory(tmp_path):
    _require_eg()
    started: list[EnterpriseGateway] = []

    def make(**kwargs) -> EnterpriseGateway:
        gw = EnterpriseGateway(tmp_path / f"eg{len(started)}", **kwargs)
        started.append(gw)
        return gw.start()

    yield make
    _stop_all(started)


@pytest.fixture
def gateway(gateway_factory) -> EnterpriseGateway:
    return gateway_factory()


# -- jkp itself, in the test's event loop -------------------------------------------------

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

from tornado.httpclient import AsyncHTTPClient, HTTPRequest  # noqa: E402
from tornado.websocket import websocket_connect  # noqa: E402

from jkp.app import JKPManagerApp  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """No JKP_* variable or ~/.jupyter config of the machine may change what a test runs."""
    for name in list(os.environ):
        if name.startswith("JKP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))


class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__()
        self.records = records

    def emit(self, record):
        self.records.append(record)


class JKP:
    """A running jkp app in this process, and how a client talks to it."""

    def __init__(self, app: JKPManagerApp):
        self.app = app
        self.log_records: list[logging.LogRecord] = []
        app.log.addHandler(_ListHandler(self.log_records))
        self.url = f"http://127.0.0.1:{app.port}"
        self.pool = app.pool_manager
        self.store = app.pool_manager.store
        self.stopped = False

    async def request(self, method, path, body=None, headers=None, **options):
        """(status, decoded JSON body) of one request to jkp."""
        response = await self.fetch(method, path, body, headers, **options)
        return response.code, json.loads(response.body) if response.body else None

    async def fetch(self, method, path, body=None, headers=None, **options):
        """The whole response to one request to jkp, errors included."""
        return await AsyncHTTPClient().fetch(
            HTTPRequest(
                self.url + path,
                method=method,
                body=body,
                headers=headers,
                allow_nonstandard_methods=True,
                request_timeout=60,
                **options,
            ),
            raise_error=False,
        )

    async def pop(self, user_id="zt"):
        return await self.request("POST", "/api/kernels/pop/", json.dumps({"userId": user_id}))

    async def idle_ids(self):
        return [json.loads(m)["id"] for m in await self.store.idle_models()]

    async def wait_for_idle(self, count, timeout=60):
        """Wait until exactly ``count`` kernels are idle; their ids."""
        await wait_until(lambda: self._idle_count_is(count), timeout, f"{count} idle kernels")
        return await self.idle_ids()

    async def _idle_count_is(self, count):
        counts = await self.store.counts()
        return counts["idle"] == count and counts["starting"] == 0

    def logged(self, prefix):
        """Messages jkp logged that start with ``prefix``."""
        return [m for m in (r.getMessage() for r in self.log_records) if m.startswith(prefix)]

    async def stop(self):
        if not self.stopped:
            self.stopped = True
            await self.app.stop_services()


def server_timing(response):
    """Step name -> milliseconds, from a response's Server-Timing header ({} when none)."""
    steps = {}
    for entry in filter(None, response.headers.get("Server-Timing", "").split(",")):
        name, _, dur = entry.strip().partition(";dur=")
        steps[name] = float(dur)
    return steps


async def wait_until(predicate, timeout, what):
    """Poll an (async) predicate until it is true; fail after ``timeout`` seconds."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def redis_client(redis_server):
    """A client of the test's Redis, for looking at jkp's keys directly."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def shared_dir(tmp_path):
    """The working_dir of the kernels: the share users' directories are made in."""
    path = tmp_path / "shared"
    path.mkdir()
    return path


@pytest.fixture
async def jkp_factory(shared_dir):
    """Start jkp apps on a Redis and an EG; ``make(redis, gateway, *argv)`` (redis None: as
    the options or environment say, e.g. through sentinels). All stopped after."""
    started: list[JKP] = []

    async def make(redis, gateway, *argv) -> JKP:
        defaults = [
            "--ip=127.0.0.1",
            f"--port={localstack.free_port()}",
            *([f"--RedisStore.redis_url={redis.url}"] if redis is not None else []),
            "--RedisStore.key=test:kernels:idle",
            f"--GatewayClient.url={gateway.url}",
            f"--PoolManager.working_dir={shared_dir}",
            "--PoolManager.nfs_volume_server=",
            # Now and then EG starts a local kernel on a port another one just took: it
            # dies at once ("ZMQError: Address already in use") and EG keeps reporting it.
            # jkp gives such a start up after this and starts another, which must still fit
            # in the tests' waits for idle kernels (15-60 s); a local kernel answers in ~1 s.
            "--PoolManager.kernel_ready_timeout=10",
        ]
        # traitlets refuses an option given twice: a test's own value replaces the default.
        given = {arg.split("=", 1)[0] for arg in argv}
        app = JKPManagerApp()
        app.initialize([*(d for d in defaults if d.split("=", 1)[0] not in given), *argv])
        await app.start_services()
        jkp = JKP(app)
        started.append(jkp)
        return jkp

    yield make
    for jkp in reversed(started):
        await jkp.stop()


async def run_in_kernel(gateway, kernel_id, code, timeout=30, ca_file=None):
    """Run ``code`` in a kernel through a gateway's websocket (EG's, or jkp's bridge), as a
    user's client would; its stdout."""
    import asyncio

    from jupyter_client.jsonutil import json_default
    from jupyter_client.session import Session

    session = Session(username="test-client")
    msg = session.msg(
        "execute_request",
        {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
        },
    )
    msg["channel"] = "shell"
    ws_url = gateway.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    token = getattr(gateway, "auth_token", "")
    headers = {"Authorization": f"token {token}"} if token else {}
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers, ca_certs=ca_file))
    stdout, status, idle = [], None, False
    try:
        async with asyncio.timeout(timeout):
            await conn.write_message(json.dumps(msg, default=json_default))
            while True:
                reply = json.loads(await conn.read_message())
                if reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                    continue
                if reply["msg_type"] == "stream":
                    stdout.append(reply["content"]["text"])
                elif reply["msg_type"] == "error":
                    raise AssertionError(f"kernel error: {reply['content']['evalue']}")
                elif reply["msg_type"] == "execute_reply":
                    status = reply["content"]["status"]
                elif reply["msg_type"] == "status":
                    idle = reply["content"]["execution_state"] == "idle"
                # Output is complete once the reply came and the kernel went idle, in any order.
                if status is not None and idle:
                    break
    finally:
        conn.close()
    assert status == "ok"
    return "".join(stdout)


class JKPProcess:
    """A jkp replica in a process of its own, so a test can SIGKILL it."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc = proc
        self.url = url

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def pop(self, user_id):
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(
                f"{self.url}/api/kernels/pop/",
                method="POST",
                body=json.dumps({"userId": user_id}),
                request_timeout=60,
            ),
            raise_error=False,
        )
        return response.code, json.loads(response.body) if response.body else None


@pytest.fixture
def jkp_process_factory(tmp_path, shared_dir):
    """Start jkp replicas as processes: ``make(redis, gateway, *argv)``. All stopped after."""
    started: list[JKPProcess] = []

    def make(redis, gateway, *argv) -> JKPProcess:
        port = localstack.free_port()
        log = open(tmp_path / f"jkp{len(started)}.log", "w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jkp",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--RedisStore.redis_url={redis.url}",
                "--RedisStore.key=test:kernels:idle",
                f"--GatewayClient.url={gateway.url}",
                f"--PoolManager.working_dir={shared_dir}",
                "--PoolManager.nfs_volume_server=",
                *argv,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                "PATH": os.environ["PATH"],
                "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
            },
        )
        log.close()
        replica = JKPProcess(proc, f"http://127.0.0.1:{port}")
        started.append(replica)
        return replica

    yield make
    for replica in started:
        if replica.proc.poll() is None:
            replica.proc.terminate()
    for replica in started:
        replica.proc.wait(timeout=15)


def kernel_pid(kernel_id):
    """The pid of a local kernel EG started: its command line names its connection file."""
    needle = f"kernel-{kernel_id}.json".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue  # the process ended while we looked
    raise AssertionError(f"no process for kernel {kernel_id}")


async def metric(replica, sample):
    """The value of one sample (name and labels, as exposed) in a jkp replica's /metrics."""
    response = await AsyncHTTPClient().fetch(replica.url + "/metrics")
    for line in response.body.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    raise AssertionError(f"{sample} not in {replica.url}/metrics")


# -- JupyterLab in a real browser ---------------------------------------------------------


@pytest.fixture
async def lab_factory(tmp_path):
    """Start JupyterLabs in gateway mode: ``make(gateway_url, root_dir)``. All stopped after.

    Started and stopped in a thread: Lab talks to a jkp that runs in the test's event loop
    (its stop shuts its kernels down through it)."""
    import asyncio

    started: list[localstack.JupyterLab] = []

    async def make(gateway_url, root_dir) -> localstack.JupyterLab:
        lab = localstack.JupyterLab(tmp_path / f"lab{len(started)}", gateway_url, root_dir)
        started.append(lab)
        return await asyncio.to_thread(lab.start)

    yield make
    for lab in started:
        await asyncio.to_thread(lab.stop)


@pytest.fixture
async def browser():
    """Headless Chromium (Debian's) driven by Playwright, a fresh profile per launch.

    Skipped only where scripts/bootstrap cannot install Chromium: no apt-get, or neither root
    nor sudo."""
    if not Path(localstack.CHROMIUM).exists():
        if shutil.which("apt-get") is None:
            pytest.skip(f"no {localstack.CHROMIUM} and no apt-get to install Debian's chromium")
        if os.geteuid() != 0 and shutil.which("sudo") is None:
            pytest.skip(f"no {localstack.CHROMIUM}, and neither root nor sudo to install it")
        pytest.fail(f"{localstack.CHROMIUM} missing: run scripts/bootstrap", pytrace=False)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/bootstrap", pytrace=False)
    args = list(localstack.CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    async with async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=localstack.CHROMIUM, args=args, headless=True
        )
        yield chromium
        await chromium.close()

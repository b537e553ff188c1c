"""jkp benchmark: pop latency on the real local stack, the cold path, and scale on the simulator.

    .venv/bin/python bench/run.py [--quick] [--json PATH] [--skip-scale] [--steady-only]
    .venv/bin/python bench/run.py --traces [--quick] [--time-scale F] [--adaptive MIN:MAX]
    (or scripts/bench)

1. Real stack (redis-server + Enterprise Gateway from dev/localstack.py, jkp as a process):
   pop latency and throughput at concurrency 1, 8 and 32 from a full pool, then the cold path a
   user takes without jkp (start a kernel on EG, wait until it answers, enter the user dir);
   the steady state (pops, then warm creates, one every 0.5 s on average, refills running,
   on a new connection each and on one kept open) beside EG's floor (a kernel_info round trip
   on an open websocket); ``--steady-only`` runs just that, jkp's CPU per pop and the cold
   path (what issue #13 asks); jkp as a drop-in gateway: warm creates through EG's
   kernels API on jkp vs cold creates on EG, and kernel_info round trips through jkp's
   websocket bridge vs straight to EG on the same kernel.
2. Scale (bench/gateway_simulator.py instead of EG, since 2 cores cannot hold 1000 real
   kernels): one activation sweep over 1000 pooled kernels, jkp's RSS, pop p50 with 1000 vs 10
   pooled, pops/s of 1 vs 3 replicas.
3. ``--traces`` runs only the trace replay of bench/traces.py: fixed and adaptive pools under a
   day curve, agents' batches and a classroom, on simulators with a kernel start latency.

Prints a markdown table (figure, target, PASS/FAIL) and writes every figure to JSON
(default .stack/bench-results.json). Everything binds to 127.0.0.1; every process started here
is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders
from tornado.websocket import websocket_connect

from jkp.user import SET_UP_COMM_TARGET, WARM_UP_CODE, enter_user_dir_request

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "dev"))
import traces  # noqa: E402  (bench/, beside this script)
from localstack import HOST, EnterpriseGateway, RedisServer, free_port  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
KERNEL_NAME = "python_kubernetes"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes ------------------------------------------------------------------------------


class Proc:
    """A child in its own process group (so the terminal's Ctrl-C reaches only us), logged."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict | None = None):
        self.name, self.log_path = name, log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # also whatever it left in its group
        except ProcessLookupError:
            pass
        self.proc.wait()


class Jkp(Proc):
    """One jkp replica: ``python -m jkp`` with a pool of ``target`` kernels (its most)."""

    def __init__(self, work: Path, name: str, redis: RedisServer, gateway_url: str, key: str,
                 target: int, extra: tuple[str, ...], pop_timeout: float = 30):  # fmt: skip
        self.port, self.target = free_port(), target
        self.extra = extra
        self.url = f"http://{HOST}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JKP_")}
        env["JUPYTER_CONFIG_DIR"] = str(work / "jupyter-config")  # no ~/.jupyter config
        cmd = [
            PYTHON,
            "-m",
            "jkp",
            f"--ip={HOST}",
            f"--port={self.port}",
            f"--RedisStore.redis_url={redis.url}",
            f"--RedisStore.key={key}",
            f"--GatewayClient.url={gateway_url}",
            f"--PoolManager.working_dir={work / 'shared'}",
            "--PoolManager.nfs_volume_server=",
            f"--max-pending-kernels={target}",
            f"--PoolManager.pop_timeout={pop_timeout}",
            *extra,
        ]
        super().__init__(name, cmd, work / f"{name}.log", env)

    async def status(self) -> dict:
        return await get_json(self.url + "/api/pool")

    async def wait_full(self, timeout: float) -> float:
        """Wait until the pool holds ``target`` idle kernels and none is starting; seconds."""
        t0, st, next_report = time.monotonic(), None, 30
        while True:
            self.check_alive()
            try:
                st = await self.status()
                if st["idle"] == self.target and st["starting"] == 0:
                    return time.monotonic() - t0
            except (OSError, HTTPClientError):
                pass  # not listening yet
            waited = time.monotonic() - t0
            if waited > timeout:
                raise RuntimeError(f"{self.name}: pool not full after {timeout:.0f}s: {st}")
            if waited > next_report:  # a slow fill should explain itself
                log(f"  {self.name}: pool not full after {waited:.0f}s: {st}")
                next_report += 30
            await asyncio.sleep(0.2)

    async def served_pops(self) -> tuple[float, int]:
        """(seconds, count) of the pops jkp served so far, from its own /metrics."""
        response = await AsyncHTTPClient().fetch(self.url + "/metrics")
        text = response.body.decode()
        values = {}
        for name in ("sum", "count"):
            # Summed over pools: the bench runs one.
            samples = re.findall(
                rf'^jkp_pop_duration_seconds_{name}{{outcome="served",pool="[^"]*"}} (\S+)$',
                text,
                re.M,
            )
            values[name] = sum(float(v) for v in samples)
        return values["sum"], int(values["count"])

    def rss_mb(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
        return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


class Stack:
    """Everything started, stopped in reverse order whatever happens."""

    def __init__(self):
        self.items: list = []

    def add(self, item):
        self.items.append(item)
        return item

    def remove(self, item) -> None:
        item.stop()
        self.items.remove(item)

    def stop_all(self) -> None:
        while self.items:
            item = self.items.pop()
            try:
                item.stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: stopping {item!r} failed: {e}", file=sys.stderr)


# -- HTTP helpers ---------------------------------------------------------------------------


async def get_json(url: str, method: str = "GET", body=None, timeout: float = 30) -> dict:
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(
            url,
            method=method,
            body=None if body is None else json.dumps(body),
            request_timeout=timeout,
        )
    )
    return json.loads(response.body) if response.body else None


def summary(seconds: list[float]) -> dict:
    """min/p50/p95/p99/max in ms; percentiles interpolated ("inclusive"), so with few samples
    p99 lies between the two largest."""
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {
        "n": len(ms),
        "min_ms": ms[0],
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time a process used so far: the sum over its threads of the scheduler's own count,
    in nanoseconds (/proc/<pid>/task/*/schedstat), where /proc/<pid>/stat counts in clock ticks
    (10 ms) too coarse for a few ms per pop. Threads that already exited are not in it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return total / 1e9


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


async def machine_busy(seconds: float) -> float:
    """Share of all CPUs busy during the next ``seconds``."""
    busy0, total0 = machine_jiffies()
    await asyncio.sleep(seconds)
    busy1, total1 = machine_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


async def pop_round(
    urls: list[str], n: int, concurrency: int, prefix: str, watch: dict[str, int] | None = None
) -> dict:
    """n pops with distinct userIds, ``concurrency`` in flight, round-robin over urls.

    Also records where the CPU went meanwhile: the whole machine's busy share, this client's
    CPU seconds, and those of the processes in ``watch`` (name: pid).
    """
    watch = {"client": os.getpid(), **(watch or {})}
    cpu0, (busy0, total0) = {k: cpu_seconds(v) for k, v in watch.items()}, machine_jiffies()
    client = AsyncHTTPClient(force_instance=True, max_clients=max(concurrency, 10))
    latencies, ids, failures = [], [], []
    users = [f"{prefix}-{i}" for i in range(n)]
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:  # shared iterator: each worker takes the next pop when its last is done
            request = HTTPRequest(
                urls[i % len(urls)] + "/api/kernels/pop/",
                method="POST",
                body=json.dumps({"userId": users[i]}),
                request_timeout=60,
            )
            t0 = time.perf_counter()
            response = await client.fetch(request, raise_error=False)
            latencies.append(time.perf_counter() - t0)
            model = json.loads(response.body) if response.body else {}
            if response.code == 200 and model.get("id"):
                ids.append(model["id"])
            else:
                failures.append(f"{response.code} {response.body[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    client.close()
    busy1, total1 = machine_jiffies()
    cpu = {f"{k}_s": cpu_seconds(v) - cpu0[k] for k, v in watch.items()}
    cpu["machine_busy"] = (busy1 - busy0) / max(total1 - total0, 1)
    return {
        "concurrency": concurrency,
        "pops": n,
        "ok": len(ids),
        "failures": failures[:5],
        "failed": len(failures),
        "distinct_ids": len(set(ids)) == len(ids),
        "wall_s": wall,
        "pops_per_s": n / wall,
        **summary(latencies),
        "cpu": cpu,
        "_ids": ids,
        "_users": users,
    }


# -- the steady state users see, and EG's floor ----------------------------------------------

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


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


def mean_step_ms(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per pop step between two readings of jkp_pop_step_seconds (sum, count)."""
    return {
        step: 1000 * (s - before.get(step, (0.0, 0))[0]) / max(c - before.get(step, (0.0, 0))[1], 1)
        for step, (s, c) in after.items()
    }


async def metric_total(jkp: Jkp, name: str, **labels: str) -> float:
    """A sample of jkp's /metrics summed over the series with ``labels`` (all pools), e.g.
    ``metric_total(jkp, "jkp_kernel_starts_total", outcome="ready")``."""
    text = (await AsyncHTTPClient().fetch(jkp.url + "/metrics")).body.decode()
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    return sum(
        float(value)
        for series, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M)
        if wanted <= set(series.split(","))
    )


async def pop_steps(jkp: Jkp) -> dict[str, tuple[float, int]]:
    """(seconds, count) of each step of the pops jkp served so far, from its /metrics."""
    text = (await AsyncHTTPClient().fetch(jkp.url + "/metrics")).body.decode()
    steps: dict[str, list[float]] = {}
    for name, step, value in re.findall(
        r'^jkp_pop_step_seconds_(sum|count){pool="[^"]*",step="([a-z_]+)"} (\S+)$', text, re.M
    ):
        steps.setdefault(step, [0.0, 0.0])[0 if name == "sum" else 1] += float(value)
    return {step: (s, int(c)) for step, (s, c) in steps.items()}


class RawHTTPClient:
    """A minimal HTTP/1.1 client, lean on purpose as the floor's websocket client is: the
    figures are jkp's and the network's, not a client library's (tornado's simple client
    spent ~1-2 ms more per request here, resolving 127.0.0.1 in a thread among others).

    With ``keep_alive``, one connection kept open, as a service's HTTP client keeps its
    connections (requests.Session, httpx, aiohttp): a request without a TCP connect and
    accept each. Without, a new connection per request (``Connection: close``), as curl.
    """

    def __init__(self, url: str, keep_alive: bool):
        self.host, _, port = url.split("://", 1)[1].partition(":")
        self.port, self.keep_alive = int(port), keep_alive
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> HTTPResponse:
        """POST ``body`` (JSON) to ``path``; the response, as tornado's client gives it."""
        if self._streams is None:  # asyncio sets TCP_NODELAY on it
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        closing = "" if self.keep_alive else "Connection: close\r\n"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{closing}\r\n"
        )
        writer.write(head.encode() + body)
        status_line, _, header_text = (
            (await reader.readuntil(b"\r\n\r\n")).decode().partition("\r\n")
        )
        headers = HTTPHeaders.parse(header_text)
        content = await reader.readexactly(int(headers.get("Content-Length", "0")))
        if not self.keep_alive:
            self.close()
        request = HTTPRequest(f"http://{self.host}:{self.port}{path}", "POST")
        return HTTPResponse(request, int(status_line.split()[1]), headers, io.BytesIO(content))

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def server_timing(response) -> dict[str, float]:
    """Seconds by step of a pop or warm create, from jkp's Server-Timing header."""
    steps = {}
    for entry in filter(None, response.headers.get("Server-Timing", "").split(",")):
        name, _, ms = entry.strip().partition(";dur=")
        steps[name] = float(ms) / 1000
    return steps


async def steady_round(
    jkp: Jkp,
    eg: EnterpriseGateway,
    work: Path,
    n: int,
    interval: float,
    kind: str = "pop",
    kept: bool = False,
    straight_kernels: int = 1,
    hops: HopFloors | None = None,
) -> dict:
    """``n`` pops (``kind="pop"``) or warm creates through the gateway API (``"create"``, with
    KERNEL_ID and KERNEL_WORKING_DIR), one at a time, as users make them, with the refills
    they cause running meanwhile (kernel starts compete for the CPU); before each, at a random
    moment, EG's floor on the same machine: a kernel_info round trip on an open websocket to
    an idle kernel of EG's own.

    Users arrive independently of each other and of jkp: the gaps are exponential with mean
    ``interval`` (a Poisson process; a fixed seed), and the floor is taken at a uniformly
    random point of each gap, so requests and floor alike see the machine as it is on
    average (Poisson arrivals see time averages). Gaps of one fixed length, or drawn from a
    narrow range, put requests in step with jkp's refill timer (refill_delay, 1 s, after the
    first of a burst): each would land at the start of an earlier one's refill.

    The floor is also timed to the kernel's idle status after it: ipykernel flushes its
    output streams between any reply and that status, and a pop, whose set-up is answered
    only once the kernel is idle again, pays that flush too. And right after the floor, the
    pop's own set-up is sent straight to EG, without jkp, to a kernel of EG's own armed as jkp
    arms its kernels: what the set-up costs EG and the kernel at that moment, which no change
    in jkp can cut. ``straight_kernels`` take turns, each armed again after its turn: a kernel
    idle for a while answers its set-up 0.2-0.8 ms later than one just used (as pooled
    kernels are, which wait their turn ~20 s here).

    With ``hops``, then the floors of the two hops a pop adds to that set-up, at the same
    moment: a POST to a bare tornado service (bench/tornado_floor.py, on a connection of the
    round's kind) and a Redis script's round trip from redis-py's asyncio client (jkp's
    client). Their sum with the straight set-up is the least a request can take here, its
    path being client -> jkp -> Redis, then jkp -> EG -> kernel; the rest is jkp's.

    Per request: the client's time (a new connection each; with ``kept``, one connection
    kept open; see RawHTTPClient) and jkp's own steps from its Server-Timing header; the
    rest is HTTP, both processes' request handling, and waiting for a CPU. Also jkp's CPU per
    request (refills included), from /proc.
    """
    rng = random.Random(20261128)
    floor_id, conn = await floor_channel(eg)
    straights = [await floor_channel(eg) for _ in range(straight_kernels)]
    shared = work / "shared"
    for j, (_, straight) in enumerate(straights):
        await arm_set_up(straight, f"straight-{j}")
    client = RawHTTPClient(jkp.url, keep_alive=kept)
    took, floors, floors_to_idle, set_ups, steps, aliases, ids = [], [], [], [], [], [], []
    http_floors: list[float] = []
    redis_floors: list[float] = []
    await jkp.wait_full(600)
    starts_before = await metric_total(jkp, "jkp_kernel_starts_total", outcome="ready")
    cpu_before = cpu_seconds(jkp.proc.pid)
    floor_cpu_before = cpu_seconds(hops.server.proc.pid) if hops else 0.0
    loop = asyncio.get_running_loop()
    next_at, least_idle = loop.time() + interval, jkp.target
    try:
        for i in range(n):
            gap = rng.expovariate(1 / interval)
            await asyncio.sleep(max(next_at - gap * rng.random() - loop.time(), 0))
            floor = await floor_round_trip(conn, 5.0)
            if floor is not None:
                floors.append(floor[0])
                floors_to_idle.append(floor[1])
            user = f"straight-{kind}-{kept:d}-{i}"
            straight = straights[i % straight_kernels][1]
            set_ups.append((await straight_set_up(straight, f"straight-{i}", shared, user))["idle"])
            if hops is not None:
                http_floors.append(await hops.http_round_trip(kept))
                redis_floors.append(await hops.redis_round_trip())
            await asyncio.sleep(max(next_at - loop.time(), 0))
            next_at = max(next_at + gap, loop.time())  # a late one does not bunch the rest
            if kind == "pop":
                path, body = "/api/kernels/pop/", {"userId": f"steady-{i}"}
            else:
                env = gateway_env(work, f"steady-create-{i}")
                path, body = "/api/kernels", {"name": KERNEL_NAME, "env": env}
            data = json.dumps(body).encode()
            t0 = time.perf_counter()
            response = await asyncio.wait_for(client.post(path, data), 60)
            took.append(time.perf_counter() - t0)
            model = json.loads(response.body) if response.body else {}
            if response.code not in (200, 201) or not model.get("id"):
                raise RuntimeError(f"steady {kind} {i}: {response.code} {response.body[:300]!r}")
            if kind == "create" and model["id"] != env["KERNEL_ID"]:
                raise RuntimeError(f"steady create {i} was not given its own id: {model}")
            (aliases if kind == "create" else ids).append(model["id"])
            steps.append(server_timing(response))
            if not steps[-1]:
                raise RuntimeError(f"steady {kind} {i} was not served warm: no Server-Timing")
            # Armed again after the request, its load away from the next one.
            await arm_set_up(straight, f"straight-{i + straight_kernels}")
            if i % 10 == 9:  # how far refills lag, seldom enough not to load jkp
                least_idle = min(least_idle, (await jkp.status())["idle"])
        cpu = cpu_seconds(jkp.proc.pid) - cpu_before
        floor_cpu = cpu_seconds(hops.server.proc.pid) - floor_cpu_before if hops else 0.0
        starts = await metric_total(jkp, "jkp_kernel_starts_total", outcome="ready")
    finally:
        conn.close()
        for _, straight in straights:
            straight.close()
        client.close()
        if hops is not None:
            hops.close()
        for alias in aliases:
            await delete_kernel(jkp.url, alias)
        await delete_kernels(eg, [floor_id, *(k for k, _ in straights), *ids])
    answered, floor, floor_to_idle = summary(took), summary(floors), summary(floors_to_idle)
    set_up_on_eg = summary(set_ups)
    names = [name for name in steps[0] if name != "total"]
    step_p50 = {name: summary([s.get(name, 0.0) for s in steps])["p50_ms"] for name in names}
    # In jkp around its steps (HTTP request and answer, checks), then outside jkp.
    around = summary([s["total"] - sum(s[k] for k in names) for s in steps])
    outside = summary([t - s["total"] for t, s in zip(took, steps, strict=True)])
    return {
        "kind": kind,
        "connection": "one kept open" if kept else "a new one per request",
        "requests": n,
        "interval_s": interval,
        "kernels_started_meanwhile": int(starts - starts_before),
        "least_idle_seen": least_idle,
        "answered": answered,
        "floor": floor,
        "floor_to_idle": floor_to_idle,
        "p50_vs_floor": answered["p50_ms"] / floor["p50_ms"],
        "p50_vs_floor_to_idle": answered["p50_ms"] / floor_to_idle["p50_ms"],
        "set_up_straight_on_eg": set_up_on_eg,
        "set_up_straight_on_eg_p50_vs_floor": set_up_on_eg["p50_ms"] / floor["p50_ms"],
        "set_up_p50_vs_straight_on_eg": step_p50["set_up"] / set_up_on_eg["p50_ms"],
        "p50_minus_straight_set_up_ms": answered["p50_ms"] - set_up_on_eg["p50_ms"],
        "p95_vs_floor": answered["p95_ms"] / floor["p95_ms"],
        "set_up_p50_vs_floor": step_p50["set_up"] / floor["p50_ms"],
        "step_p50_ms": step_p50,
        "around_steps_p50_ms": around["p50_ms"],
        "outside_jkp_p50_ms": outside["p50_ms"],
        "jkp_cpu_ms_per_request": 1000 * cpu / n,
        **(_least_request(answered, floor, set_ups, http_floors, redis_floors) if hops else {}),
        **({"http_floor_cpu_ms_per_request": 1000 * floor_cpu / n} if hops else {}),
    }


def _least_request(
    answered: dict, floor: dict, set_ups: list[float], http: list[float], redis: list[float]
) -> dict:
    """The least a request can take here, sample by sample: the set-up straight on EG plus
    the floors of the HTTP and Redis hops, all taken at one moment; and the request beside it."""
    least = summary([s + h + r for s, h, r in zip(set_ups, http, redis, strict=True)])
    return {
        "http_floor": summary(http),
        "redis_floor": summary(redis),
        "least": least,
        "least_p50_vs_floor": least["p50_ms"] / floor["p50_ms"],
        "p50_vs_least": answered["p50_ms"] / least["p50_ms"],
        "p50_minus_least_ms": answered["p50_ms"] - least["p50_ms"],
    }


class HopFloors:
    """The floors of the hops a pop adds to its set-up: an HTTP request to a bare tornado
    service (bench/tornado_floor.py, its own process), and a Redis script's round trip."""

    def __init__(self, work: Path, redis: RedisServer):
        self.port = free_port()
        self.server = Proc(
            "tornado-floor",
            [PYTHON, str(REPO / "bench" / "tornado_floor.py"), str(self.port)],
            work / "tornado-floor.log",
        )
        self.redis_url = redis.url
        self._redis: aioredis.Redis | None = None
        self._script = None
        self._clients: dict[bool, RawHTTPClient] = {}

    async def wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            self.server.check_alive()
            try:
                await RawHTTPClient(f"http://{HOST}:{self.port}", False).post("/", b"{}")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def http_round_trip(self, kept: bool) -> float:
        """Seconds for one POST answered by the bare service, on a new connection or on one
        kept open."""
        client = self._clients.get(kept)
        if client is None:
            client = self._clients[kept] = RawHTTPClient(f"http://{HOST}:{self.port}", kept)
        started = time.perf_counter()
        await client.post("/api/kernels/pop/", b'{"userId": "floor"}')
        return time.perf_counter() - started

    async def redis_round_trip(self) -> float:
        """Seconds for one Lua script's round trip, as jkp's claim makes it (EVALSHA)."""
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.redis_url)
            self._script = self._redis.register_script("return redis.call('LLEN', KEYS[1])")
            await self._script(keys=["bench:floor"])  # loaded: EVALSHA from here on
        started = time.perf_counter()
        await self._script(keys=["bench:floor"])
        return time.perf_counter() - started

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def stop(self) -> None:
        self.close()
        self.server.stop()


# -- real stack -----------------------------------------------------------------------------


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


async def cold_path(eg: EnterpriseGateway, user_dir: Path, env: dict | None = None) -> float:
    """What a user waits for without jkp: start a kernel on EG (with ``env``, by default only
    a user EG lets run kernels), wait until it answers a kernel_info_request, make and enter
    the user's dir. Seconds; the kernel is deleted after."""
    t0 = time.perf_counter()
    model = await get_json(
        eg.url + "/api/kernels",
        "POST",
        {"name": KERNEL_NAME, "env": env or {"KERNEL_USERNAME": "jovyan"}},
        120,
    )
    try:
        if env and model["id"] != env.get("KERNEL_ID", model["id"]):
            raise RuntimeError(f"EG started {model['id']}, not the KERNEL_ID asked for")
        conn = await websocket_connect(ws_url(eg.url, model["id"]))
        try:
            deadline = time.monotonic() + 60
            # The kernel may not listen yet: ask again every second, as jupyter_client does.
            while await kernel_info_round_trip(conn, 1.0) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kernel {model['id']} not ready after 60s")
            code = f"import os; d = {str(user_dir)!r}; os.makedirs(d, exist_ok=True); os.chdir(d)"
            answer = await shell_request(
                conn,
                "execute_request",
                {"code": code, "silent": True, "store_history": False, "allow_stdin": False},
                30,
            )
            elapsed = time.perf_counter() - t0
        finally:
            conn.close()
        reply = answer and answer[1]
        if not reply or reply.get("status") != "ok" or not user_dir.is_dir():
            raise RuntimeError(f"cold path set-up failed: {reply}")
        return elapsed
    finally:
        await delete_kernels(eg, [model["id"]])


# -- the gateway: EG's kernels API served by jkp ---------------------------------------------

# A create through the gateway needs a user EG lets run kernels (it refuses root, which this
# machine runs as); not the pool's own (jovyan), as a client's would not be.
GATEWAY_USER = "alice"


def ws_url(url: str, kernel_id: str) -> str:
    return url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"


def gateway_env(work: Path, name: str) -> dict[str, str]:
    """A create's env as EG's clients send it: the kernel's id, chosen by the client, and its
    working directory inside the pool's share."""
    return {
        "KERNEL_ID": str(uuid.uuid4()),
        "KERNEL_WORKING_DIR": str(work / "shared" / name),
        "KERNEL_USERNAME": GATEWAY_USER,
    }


async def create_kernel(url: str, env: dict[str, str]) -> dict:
    """``POST /api/kernels`` on ``url``; the model, checked to be the kernel asked for."""
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(
            url + "/api/kernels",
            method="POST",
            body=json.dumps({"name": KERNEL_NAME, "env": env}),
            request_timeout=120,
        ),
        raise_error=False,
    )
    model = json.loads(response.body) if response.code == 201 else {}
    if model.get("id") != env["KERNEL_ID"]:
        raise RuntimeError(f"create on {url}: {response.code} {response.body[:300]!r}")
    return model


async def delete_kernel(url: str, kernel_id: str) -> None:
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"{url}/api/kernels/{kernel_id}", method="DELETE", request_timeout=60),
        raise_error=False,
    )
    if response.code not in (204, 404):
        raise RuntimeError(f"DELETE {kernel_id} on {url}: {response.code} {response.body!r}")


async def working_dir_of(conn) -> str:
    """The current directory of the kernel on an open websocket (user_expressions: no output)."""
    content = {"code": "", "silent": True, "store_history": False, "allow_stdin": False,
               "user_expressions": {"cwd": "__import__('os').getcwd()"}}  # fmt: skip
    answer = await shell_request(conn, "execute_request", content, 10)
    expression = (answer[1].get("user_expressions") or {}).get("cwd", {}) if answer else {}
    text = expression.get("data", {}).get("text/plain", "")
    return text.strip("'\"")


async def warm_create(jkp: Jkp, work: Path, name: str) -> tuple[float, float, float]:
    """A create through jkp, as a client of EG's API makes it: seconds until jkp answered,
    until its websocket through jkp's bridge was open, and until the kernel also answered a
    kernel_info_request on it. Checked to be set up (in its working directory); deleted
    through jkp after, untimed."""
    env = gateway_env(work, name)
    kernel_id = env["KERNEL_ID"]
    t0 = time.perf_counter()
    await create_kernel(jkp.url, env)
    answered = time.perf_counter() - t0
    try:
        conn = await websocket_connect(ws_url(jkp.url, kernel_id))
        connected = time.perf_counter() - t0
        try:
            info = await kernel_info_round_trip(conn, 10.0)
            first_info = time.perf_counter() - t0
            if info is None:
                raise RuntimeError(f"warm kernel {kernel_id} did not answer kernel_info in 10 s")
            cwd = await working_dir_of(conn)
        finally:
            conn.close()
        if cwd != env["KERNEL_WORKING_DIR"]:
            raise RuntimeError(f"warm kernel {kernel_id} is in {cwd!r}, not its working dir")
    finally:
        await delete_kernel(jkp.url, kernel_id)
    return answered, connected, first_info


async def gateway_round(
    jkp: Jkp, eg: EnterpriseGateway, work: Path, n_warm: int, n_cold: int, gap: float
) -> dict:
    """Creates as EG's clients make them: ``n_warm`` through jkp, one at a time, each ``gap``
    seconds after the pool refilled (so each is served warm); then ``n_cold`` straight to EG
    with the same env, timed until the kernel answers and is set up as a warm one is (its
    directory made and entered): what a create costs a user without jkp."""
    steps_before = await pop_steps(jkp)
    served_before = await metric_total(jkp, "jkp_pops_total", outcome="served")
    answered, connected, first_info = [], [], []
    for i in range(n_warm):
        await jkp.wait_full(600)
        await asyncio.sleep(gap)
        a, c, f = await warm_create(jkp, work, f"gw-warm-{i}")
        answered.append(a)
        connected.append(c)
        first_info.append(f)
    served = await metric_total(jkp, "jkp_pops_total", outcome="served") - served_before
    if served != n_warm:
        raise RuntimeError(f"only {served:.0f} of {n_warm} creates through jkp were served warm")
    steps_after = await pop_steps(jkp)
    cold = []
    for i in range(n_cold):
        await jkp.wait_full(600)  # the last warm kernels' refill is not the cold create's load
        await asyncio.sleep(gap)
        cold.append(await cold_path(eg, work / "shared" / f"gw-cold-{i}", gateway_env(work, "")))
    warm, warm_info, cold = summary(answered), summary(first_info), summary(cold)
    step_ms = mean_step_ms(steps_before, steps_after)
    return {
        "gap_s": gap,
        "warm_answered": warm,
        "warm_websocket_open": summary(connected),
        "warm_first_kernel_info": warm_info,
        "cold": cold,
        "cold_vs_answered_p50": cold["p50_ms"] / warm["p50_ms"],
        "cold_vs_first_kernel_info_p50": cold["p50_ms"] / warm_info["p50_ms"],
        "step_mean_ms": step_ms,
    }


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


async def websocket_round(
    jkp: Jkp,
    eg: EnterpriseGateway,
    redis: RedisServer,
    key: str,
    work: Path,
    n: int,
    warm_up: int,
    n_connects: int,
) -> dict:
    """kernel_info round trips on one kernel, created warm through jkp, over two websockets
    open at once: one through jkp's bridge, one straight to EG; interleaved (each pair in
    turn starts with the other), so noise hits both alike. Before, ``n_connects`` websockets
    opened each way, timed until the handshake's answer."""
    env = gateway_env(work, "ws")
    await jkp.wait_full(600)
    await create_kernel(jkp.url, env)
    alias = env["KERNEL_ID"]
    client = aioredis.from_url(redis.url)
    try:
        binding = await client.hget(f"{key}:aliases", alias)  # jkp's alias -> kernel on EG
    finally:
        await client.aclose()
    upstream = json.loads(binding)["kernel_id"] if binding else None
    urls = {"direct": ws_url(eg.url, upstream), "jkp": ws_url(jkp.url, alias)}
    channels: dict[str, ShellChannel] = {}
    times: dict[str, list[float]] = {"direct": [], "jkp": []}
    connects: dict[str, list[float]] = {"direct": [], "jkp": []}
    first_infos: dict[str, list[float]] = {"direct": [], "jkp": []}
    try:
        if upstream is None or upstream == alias:
            raise RuntimeError(f"kernel {alias}: no binding in Redis ({binding!r})")
        # Opening a websocket, and its first kernel_info: once it accepted one, EG nudges the
        # kernel (kernel_info requests of its own) before the client's is answered.
        for i in range(n_connects):
            for way in ("direct", "jkp") if i % 2 == 0 else ("jkp", "direct"):
                await asyncio.sleep(0.05)
                t0 = time.perf_counter()
                conn = await websocket_connect(urls[way])
                connects[way].append(time.perf_counter() - t0)
                try:
                    if await kernel_info_round_trip(conn, 10.0) is None:
                        raise RuntimeError(f"kernel {alias}: no kernel_info reply ({way})")
                    first_infos[way].append(time.perf_counter() - t0)
                finally:
                    conn.close()
        channels["direct"] = ShellChannel(await websocket_connect(urls["direct"]))
        channels["jkp"] = ShellChannel(await websocket_connect(urls["jkp"]))
        for i in range(warm_up + n):
            for way in ("direct", "jkp") if i % 2 == 0 else ("jkp", "direct"):
                await asyncio.sleep(0.01)  # the last request's iopub tail has arrived
                seconds = await channels[way].kernel_info(5.0)
                if i >= warm_up:
                    times[way].append(seconds)
    finally:
        for channel in channels.values():
            channel.close()
        await delete_kernel(jkp.url, alias)
    direct, via = summary(times["direct"]), summary(times["jkp"])
    return {
        "round_trips": n,
        "warm_up": warm_up,
        "direct": direct,
        "via_jkp": via,
        "p50_vs_direct": via["p50_ms"] / direct["p50_ms"],
        "p95_vs_direct": via["p95_ms"] / direct["p95_ms"],
        "p50_added_ms": via["p50_ms"] - direct["p50_ms"],
        "connect_direct": summary(connects["direct"]),
        "connect_via_jkp": summary(connects["jkp"]),
        "connect_first_info_direct": summary(first_infos["direct"]),
        "connect_first_info_via_jkp": summary(first_infos["jkp"]),
    }


async def served_round(
    jkp: Jkp, eg: EnterpriseGateway, work: Path, n: int, c: int, key: str, watch: dict[str, int]
) -> dict:
    """A pop_round on one jkp, with the same pops' mean time inside jkp (claim to hand-over,
    from its /metrics: the rest is HTTP and client) and the user directories they made; the
    kernels handed out are deleted after."""
    served_before = await jkp.served_pops()
    r = await pop_round([jkp.url], n, c, key, watch)
    served_after = await jkp.served_pops()
    r["jkp_mean_ms"] = (
        1000 * (served_after[0] - served_before[0]) / max(served_after[1] - served_before[1], 1)
    )
    r["user_dirs_made"] = sum((work / "shared" / u).is_dir() for u in r.pop("_users"))
    await delete_kernels(eg, r.pop("_ids"))
    return r


async def steady_rounds(
    jkp: Jkp, eg: EnterpriseGateway, redis: RedisServer, stack: Stack, work: Path, n: int, out: dict
) -> None:
    """The steady state users see, beside EG's floor: ``n`` pops, then ``n`` warm creates,
    one every 0.5 s on average, refills running meanwhile; beside each, the floors of the
    hops it adds (HopFloors)."""
    rounds = (
        ("steady", "pop", False),
        ("steady_kept", "pop", True),
        ("steady_create", "create", False),
        ("steady_create_kept", "create", True),
    )
    hops = stack.add(HopFloors(work, redis))
    await hops.wait_listening()
    for key, kind, kept in rounds:
        await jkp.wait_full(600)
        connection = "one connection kept open" if kept else "a new connection each"
        log(f"steady state: {n} {kind}s, one every 0.5 s on average, {connection}")
        straight = min(n, 20)  # kernels whose turns age them as pooled kernels age
        s = out[key] = await steady_round(jkp, eg, work, n, 0.5, kind, kept, straight, hops)
        log(f"  p50 {s['answered']['p50_ms']:.1f} ms vs floor {s['floor']['p50_ms']:.1f} ms "
            f"({s['p50_vs_floor']:.2f}×); p95 {s['p95_vs_floor']:.2f}×; "
            f"{s['kernels_started_meanwhile']} kernels started meanwhile")  # fmt: skip
        log(f"  least it can take here {s['least']['p50_ms']:.1f} ms "
            f"({s['least_p50_vs_floor']:.2f}× floor); "
            f"it took {s['p50_vs_least']:.2f}× that")  # fmt: skip
    stack.remove(hops)


async def real_stack(args, work: Path, stack: Stack, out: dict) -> None:
    redis = stack.add(RedisServer(work / "redis"))
    eg = stack.add(EnterpriseGateway(work / "eg"))
    await asyncio.to_thread(redis.start)
    await asyncio.to_thread(eg.start)
    out["machine"]["enterprise_gateway"] = eg.request("GET", "/api")[1]
    log(f"Redis {redis.url}, EG {eg.url} (logs in {work})")

    # (name, concurrency, pops, pool, refill_delay). Pool = the round's pops, so no pop waits for
    # a start, and live kernels (~52 MB each) stay below ~110: handed-out ones are deleted after
    # each round. jkp's default refill_delay (1 s) outlasts each round's burst; the last round
    # runs with refill at once, to show what kernel starts beside the pops cost here.
    rounds = [("c1", 1, 10, 32, 1), ("c8", 8, 16, 32, 1), ("c32", 32, 32, 32, 1),
              ("c1_refill_at_once", 1, 10, 32, 0)] if args.quick else [
        ("c1", 1, 40, 40, 1), ("c8", 8, 64, 64, 1), ("c32", 32, 96, 96, 1),
        ("c1_refill_at_once", 1, 40, 40, 0)]  # fmt: skip
    # With ~100 local kernels EG now and then starts one whose ZMQ port is already taken; it dies,
    # and jkp notices only at kernel_ready_timeout (300 s by default): bound that stall.
    options = ("--PoolManager.activation_interval=0", "--PoolManager.max_concurrent_starts=4",
               "--PoolManager.kernel_ready_timeout=60")  # fmt: skip
    if args.steady_only:
        # What issue #13 asks, alone: jkp's CPU per pop from a full pool (no refill during it),
        # the cold path, and the steady state of pops and of warm creates beside EG's floor.
        jkp = stack.add(Jkp(work, "jkp-steady", redis, eg.url, "bench:real", 40, options))
        await jkp.wait_full(900)
        await delete_kernels(eg, (await pop_round([jkp.url], 2, 1, "warm-steady"))["_ids"])
        await jkp.wait_full(600)
        n = 10 if args.quick else 30
        log(f"round c1: {n} pops from a full pool, for jkp's CPU per pop")
        r = await served_round(jkp, eg, work, n, 1, "c1", {"jkp": jkp.proc.pid})
        r["refill_delay_s"] = 1
        out["rounds"] = {"c1": r}
        await jkp.wait_full(600)
        times = [await cold_path(eg, work / "shared" / f"cold-{i}")
                 for i in range(3 if args.quick else 10)]  # fmt: skip
        out["cold_path"] = summary(times)
        await steady_rounds(jkp, eg, redis, stack, work, 10 if args.quick else 60, out)
        return
    jkp, out["rounds"] = None, {}
    for key, c, n, target, refill_delay in rounds:
        r = {"refill_delay_s": refill_delay}
        extra = (*options, f"--PoolManager.refill_delay={refill_delay}")
        if jkp is None or (jkp.target, jkp.extra) != (target, extra):
            if jkp is not None:
                stack.remove(jkp)  # full and quiet: the pool stays in Redis for the next one
            jkp = stack.add(Jkp(work, f"jkp-{key}", redis, eg.url, "bench:real", target, extra))
            r["fill_s"] = await jkp.wait_full(900)
            log(f"jkp with a pool of {target}: full after {r['fill_s']:.1f}s; 2 warm-up pops")
            warm = await pop_round([jkp.url], 2, 1, f"warm-{target}")
            await delete_kernels(eg, warm["_ids"])
            await jkp.wait_full(600)
        busy_before = await machine_busy(1.0)
        log(f"round {key}: {n} pops from a full pool of {target} (CPU {busy_before:.0%} busy)")
        watch = {"jkp": jkp.proc.pid, "eg": eg.pid, "redis": redis.pid}
        r.update(await served_round(jkp, eg, work, n, c, key, watch))
        after = await jkp.status()
        r["pool_after_round"] = {k: after[k] for k in ("idle", "starting")}
        r["cpu"]["machine_busy_1s_before"] = busy_before  # the full pool at rest: ~0 expected
        log(f"  p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['pops_per_s']:.1f} pops/s, "
            f"{r['failed']} failed; refilling")  # fmt: skip
        # Refilled before anything else runs, so no kernel start is cut short or competes.
        r["refill_s"] = await jkp.wait_full(600)
        out["rounds"][key] = r
        if key == "c1":
            # The cold path on the same stack, with the pool full and quiet.
            times = [await cold_path(eg, work / "shared" / f"cold-{i}")
                     for i in range(3 if args.quick else 10)]  # fmt: skip
            out["cold_path"] = summary(times)
            log(f"cold path: p50 {out['cold_path']['p50_ms']:.0f} ms")
            await steady_rounds(jkp, eg, redis, stack, work, 10 if args.quick else 60, out)
            # The gateway: creates as EG's clients make them, warm through jkp vs cold on EG.
            n_warm, n_cold = (10, 3) if args.quick else (40, 10)
            log(f"gateway: {n_warm} warm creates through jkp, each 0.5 s after the pool "
                f"refilled; {n_cold} cold creates on EG")  # fmt: skip
            g = out["gateway"] = await gateway_round(jkp, eg, work, n_warm, n_cold, 0.5)
            log(f"  warm create p50 {g['warm_answered']['p50_ms']:.1f} ms (+ first kernel_info "
                f"{g['warm_first_kernel_info']['p50_ms']:.1f} ms), cold "
                f"{g['cold']['p50_ms']:.0f} ms")  # fmt: skip
            # A kernel's websocket through jkp's bridge vs straight to EG.
            n = 50 if args.quick else 200
            log(f"websocket: {n} kernel_info round trips each way, via jkp and straight to EG")
            w = out["websocket"] = await websocket_round(
                jkp,
                eg,
                redis,
                "bench:real",
                work,
                n,
                10 if args.quick else 20,
                10 if args.quick else 20,
            )
            log(f"  p50 via jkp {w['via_jkp']['p50_ms']:.2f} ms, direct "
                f"{w['direct']['p50_ms']:.2f} ms ({w['p50_vs_direct']:.2f}×)")  # fmt: skip
            await jkp.wait_full(600)
    for server in (jkp, eg, redis):  # nothing of it may take CPU from the scale runs
        stack.remove(server)
    jkp_logs = "".join(f.read_text(errors="replace") for f in work.glob("jkp-*.log"))
    out["real_stack_events"] = {
        "kernel_starts_failed": len(re.findall(r"Starting kernel \S+ failed", jkp_logs)),
        "eg_port_in_use": eg.log_path.read_text(errors="replace").count("Address already in use"),
    }


# -- scale, on the gateway simulator ----------------------------------------------------------


class Simulator(Proc):
    def __init__(self, work: Path, name: str, latency_ms: float = 0, start_latency_s: float = 0):
        sim = str(REPO / "bench" / "gateway_simulator.py")
        cmd = [PYTHON, sim, "--port", "0", "--ip", HOST, "--stats", f"--latency-ms={latency_ms}",
               f"--start-latency-s={start_latency_s}"]  # fmt: skip
        super().__init__(name, cmd, work / f"{name}.log")
        self.url = None

    async def wait_listening(self) -> str:
        for _ in range(200):
            self.check_alive()
            m = re.search(r"listening on (http://\S+)", self.log_path.read_text())
            if m:
                self.url = m.group(1)
                return self.url
            await asyncio.sleep(0.05)
        raise RuntimeError("gateway simulator did not start")


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


# Reply latency of the simulator the activation sweep is measured on: without one every request
# is answered before the next is read, and how many jkp keeps in flight cannot be seen.
SWEEP_LATENCY_MS = 20


async def scale(args, work: Path, stack: Stack, out: dict) -> None:
    pool = 200 if args.quick else 1000
    n_seq, n_rate = (50, 200) if args.quick else (200, 600)
    redis = stack.add(RedisServer(work / "redis-scale"))
    await asyncio.to_thread(redis.start)
    res = out["scale"] = {"pool": pool, "sweep_latency_ms": SWEEP_LATENCY_MS}

    def replica(sim: Simulator, name: str, key: str, target: int, activation: int = 0) -> Jkp:
        options = ("--PoolManager.max_concurrent_starts=50",
                   "--PoolManager.kernel_ready_timeout=30",
                   f"--PoolManager.activation_interval={activation}")  # fmt: skip
        return stack.add(Jkp(work, name, redis, sim.url, key, target, options))

    # (i)+(ii) activation every 5 s, on a simulator that answers after SWEEP_LATENCY_MS. jkp has
    # no endpoint to trigger a sweep: it is the first burst of kernel_info requests the
    # simulator sees once the pool is full.
    sim = stack.add(Simulator(work, "simulator-sweep", SWEEP_LATENCY_MS))
    await sim.wait_listening()
    jkp = replica(sim, "scale-activation", "bench:sweep", pool, activation=5)
    res["fill_s"] = await jkp.wait_full(600)
    full_at = time.time()
    log(f"sim: {pool} pooled after {res['fill_s']:.1f}s; waiting for an activation sweep")
    deadline = time.monotonic() + 120
    while True:
        jkp.check_alive()
        stats = await get_json(sim.url + "/bench/stats")
        sweeps = [b for b in stats["bursts"] if b["first"] > full_at]
        if sweeps:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no activation sweep seen in 120s: {stats}")
        await asyncio.sleep(0.5)
    b = sweeps[0]
    res["sweep"] = {"duration_s": b["last"] - b["first"], "requests": b["count"],
                    "kernels": b["kernels"], "max_in_flight": b["max_in_flight"],
                    "max_open_websockets": b["max_open"]}  # fmt: skip
    res.update(jkp.rss_mb())
    log(f"  sweep {res['sweep']}, jkp RSS {res['rss_mb']:.0f} MB")
    stack.remove(jkp)
    stack.remove(sim)

    # The rest on a simulator that answers at once, without activation sweeps in the way.
    sim = stack.add(Simulator(work, "simulator"))
    await sim.wait_listening()
    replicas = [replica(sim, "scale-r0", "bench:scale", pool)]
    res["fill_no_latency_s"] = await replicas[0].wait_full(600)

    # (iii) pop p50 at c=1 with the big pool.
    watch = {"jkp": replicas[0].proc.pid, "simulator": sim.proc.pid, "redis": redis.pid}
    await pop_round([replicas[0].url], 2, 1, "warm-big")
    await replicas[0].wait_full(600)
    res["pop_c1_big"] = public(await pop_round([replicas[0].url], n_seq, 1, "big", watch))
    log(f"  pop p50 with {pool} pooled: {res['pop_c1_big']['p50_ms']:.1f} ms")

    # (iv) pops/s at c=32 from 1, then 3 replicas sharing Redis and the simulator. Handed-out
    # simulator kernels are plain objects without timers: left alone, they cost nothing.
    for count in (1, 3):
        while len(replicas) < count:
            replicas.append(replica(sim, f"scale-r{len(replicas)}", "bench:scale", pool))
            watch[f"jkp{len(replicas) - 1}"] = replicas[-1].proc.pid
        for r in replicas:
            await r.wait_full(600)
        r = await pop_round([r.url for r in replicas], n_rate, 32, f"rate{count}", watch)
        res[f"replicas_{count}"] = public(r)
        log(f"  {count} replica(s): {r['pops_per_s']:.0f} pops/s, {r['failed']} failed")
    for r in replicas:
        stack.remove(r)

    # (iii) again with 10 pooled, on a key of its own.
    small = replica(sim, "scale-small", "bench:small", 10)
    await small.wait_full(120)
    watch = {"jkp": small.proc.pid, "simulator": sim.proc.pid, "redis": redis.pid}
    await pop_round([small.url], 2, 1, "warm-small")
    await small.wait_full(120)
    res["pop_c1_small"] = public(await pop_round([small.url], n_seq, 1, "small", watch))
    log(f"  pop p50 with 10 pooled: {res['pop_c1_small']['p50_ms']:.1f} ms")
    stack.remove(small)


# -- report ---------------------------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model.group(1) if model else platform.processor(),
        "python": platform.python_version(),
        "jkp_git": git,  # "-dirty": jkp was being edited while this ran
    }


def checks(out: dict) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, PASS/FAIL/—) rows; ratios are also stored in ``out``."""
    rows = []

    def row(figure, value, target="—", ok=None):
        rows.append((figure, value, target, "—" if ok is None else "PASS" if ok else "FAIL"))

    for key, r in out.get("rounds", {}).items():
        # A pop counts only with a 200, its own kernel, and the user's directory made.
        broken = r["failed"] or not r["distinct_ids"] or r["user_dirs_made"] != r["ok"]
        bad = f", {r['failed']} failed, dirs {r['user_dirs_made']}/{r['ok']}" if broken else ""
        ms = " / ".join(f"{r[k]:.1f}" for k in ("min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"))
        c = r["concurrency"]
        name = f"c={c}" + (", refill at once" if r["refill_delay_s"] == 0 else "")
        row(f"pop {name} (n={r['pops']}) min / p50 / p95 / p99 / max", f"{ms} ms{bad}")
        row(f"pop {name}: mean inside jkp (claim to hand-over)", f"{r['jkp_mean_ms']:.1f} ms")
        if "jkp_s" in r["cpu"]:
            per_pop = 1000 * r["cpu"]["jkp_s"] / r["pops"]
            row(f"pop {name}: jkp CPU per pop (/proc schedstat)", f"{per_pop:.2f} ms")
        if key == "c1":
            row("pop p50, c=1", f"{r['p50_ms']:.1f} ms", "≤ 10 ms", r["p50_ms"] <= 10 and not bad)
            row("pop p99, c=1", f"{r['p99_ms']:.1f} ms", "≤ 30 ms", r["p99_ms"] <= 30 and not bad)
        if key == "c32":
            row(
                "pop p99, c=32", f"{r['p99_ms']:.1f} ms", "≤ 100 ms", r["p99_ms"] <= 100 and not bad
            )
            ok = r["pops_per_s"] >= 200 and not bad
            row("pops/s from a full pool, c=32", f"{r['pops_per_s']:.0f}/s", "≥ 200/s", ok)
        else:
            row(f"pops/s, {name}", f"{r['pops_per_s']:.0f}/s")
    if "cold_path" in out and "steady" in out:
        ratio = out["cold_path"]["p50_ms"] / out["steady"]["answered"]["p50_ms"]
        out["cold_vs_steady_pop_p50"] = ratio
        # No target: the cold path is timed on a quiet pool, the steady pops beside refills.
        row("cold path p50 / steady-state pop p50", f"{ratio:.1f}×")
    for key, kind in (
        ("steady", "pop"),
        ("steady_kept", "pop, connection kept"),
        ("steady_create", "warm create"),
        ("steady_create_kept", "warm create, connection kept"),
    ):
        if key not in out:
            continue
        s = out[key]
        answered, floor = s["answered"], s["floor"]
        row(
            f"steady state: {kind} (n={s['requests']}, Poisson arrivals, one every "
            f"{s['interval_s']} s on average, refills running; connection: {s['connection']}) "
            "p50 / p95",
            f"{answered['p50_ms']:.1f} / {answered['p95_ms']:.1f} ms "
            f"({s['kernels_started_meanwhile']} kernels started meanwhile, "
            f"≥ {s['least_idle_seen']} idle)",
        )
        row(f"steady state ({kind}): EG floor (kernel_info on an open websocket) p50 / p95; "
            "the same until the kernel's idle status, p50",
            f"{floor['p50_ms']:.1f} / {floor['p95_ms']:.1f} ms; "
            f"{s['floor_to_idle']['p50_ms']:.1f} ms")  # fmt: skip
        row(f"steady state: {kind} p50 / floor p50", f"{s['p50_vs_floor']:.2f}×", "≤ 1.5×",
            s["p50_vs_floor"] <= 1.5)  # fmt: skip
        row(f"steady state: {kind} p95 / floor p95", f"{s['p95_vs_floor']:.2f}×", "≤ 3×",
            s["p95_vs_floor"] <= 3)  # fmt: skip
        steps = ", ".join(f"{k} {v:.2f}" for k, v in s["step_p50_ms"].items())
        row(f"steady state: {kind} p50 per step inside jkp (Server-Timing, ms); around "
            "them in jkp (HTTP, checks); outside jkp (client, connection, waits for a CPU)",
            f"{steps}; around {s['around_steps_p50_ms']:.2f}; "
            f"outside {s['outside_jkp_p50_ms']:.2f}")  # fmt: skip
        row(f"steady state: {kind} set-up p50 / floor p50", f"{s['set_up_p50_vs_floor']:.2f}×")
        # No target: the part of a pop that is EG's and the kernel's, measured beside it.
        on_eg = s["set_up_straight_on_eg"]
        row(f"steady state ({kind}): the same set-up straight on EG, without jkp, p50 (/ floor "
            f"p50); jkp's set-up step / it; {kind} p50 minus it",
            f"{on_eg['p50_ms']:.1f} ms ({s['set_up_straight_on_eg_p50_vs_floor']:.2f}×); "
            f"{s['set_up_p50_vs_straight_on_eg']:.2f}×; "
            f"{s['p50_minus_straight_set_up_ms']:.2f} ms")  # fmt: skip
        if "least" in s:
            # No target: the floors of what a request passes through besides EG, same moments.
            row(f"steady state ({kind}): the hops it adds, p50: an HTTP POST to a bare tornado "
                "service (a JSON answer); a Redis script round trip (redis-py asyncio)",
                f"{s['http_floor']['p50_ms']:.2f} ms; "
                f"{s['redis_floor']['p50_ms']:.2f} ms")  # fmt: skip
            row(f"steady state ({kind}): the least it can take here (set-up straight on EG + "
                f"both hops, per sample) p50 (/ floor p50); {kind} p50 / it; minus it",
                f"{s['least']['p50_ms']:.1f} ms ({s['least_p50_vs_floor']:.2f}×); "
                f"{s['p50_vs_least']:.2f}×; {s['p50_minus_least_ms']:.2f} ms")  # fmt: skip
        # No target: what a pop would cost against a floor that, like it, ends at idle.
        row(f"steady state: {kind} p50 / floor-until-idle p50",
            f"{s['p50_vs_floor_to_idle']:.2f}×")  # fmt: skip
        row(f"steady state: jkp CPU per {kind}, its refill included",
            f"{s['jkp_cpu_ms_per_request']:.2f} ms")  # fmt: skip
        if "http_floor_cpu_ms_per_request" in s:
            row(f"steady state ({kind}): the bare tornado service's CPU per request",
                f"{s['http_floor_cpu_ms_per_request']:.2f} ms")  # fmt: skip
    if "gateway" in out:
        g = out["gateway"]
        warm, info, cold = g["warm_answered"], g["warm_first_kernel_info"], g["cold"]
        row(f"gateway: warm create through jkp (n={warm['n']}), answered p50 / p95",
            f"{warm['p50_ms']:.1f} / {warm['p95_ms']:.1f} ms")  # fmt: skip
        opened = g["warm_websocket_open"]
        row("gateway: warm create + websocket through jkp open p50 / p95",
            f"{opened['p50_ms']:.1f} / {opened['p95_ms']:.1f} ms")  # fmt: skip
        row("gateway: warm create + first kernel_info over jkp's websocket p50 / p95",
            f"{info['p50_ms']:.1f} / {info['p95_ms']:.1f} ms")  # fmt: skip
        row(f"gateway: cold create on EG until it answers and is set up (n={cold['n']}) "
            "p50 / p95", f"{cold['p50_ms']:.0f} / {cold['p95_ms']:.0f} ms")  # fmt: skip
        ratio = g["cold_vs_answered_p50"]
        row("gateway: cold p50 / warm create answered p50", f"{ratio:.1f}×", "≥ 20×",
            ratio >= 20)  # fmt: skip
        ratio = g["cold_vs_first_kernel_info_p50"]
        row("gateway: cold p50 / warm create + first kernel_info p50", f"{ratio:.1f}×", "≥ 20×",
            ratio >= 20)  # fmt: skip
        steps = ", ".join(f"{k} {v:.2f}" for k, v in g["step_mean_ms"].items())
        row("gateway: warm create, mean per step inside jkp (ms)", steps)
    if "websocket" in out:
        w = out["websocket"]
        direct, via = w["direct"], w["via_jkp"]
        row(f"websocket: kernel_info round trip straight to EG (n={direct['n']}) p50 / p95",
            f"{direct['p50_ms']:.2f} / {direct['p95_ms']:.2f} ms")  # fmt: skip
        row(f"websocket: the same through jkp's bridge (n={via['n']}) p50 / p95",
            f"{via['p50_ms']:.2f} / {via['p95_ms']:.2f} ms")  # fmt: skip
        ok = via["p50_ms"] <= 1.5 * direct["p50_ms"] + 1
        row("websocket: via jkp p50 / direct p50", f"{w['p50_vs_direct']:.2f}× "
            f"(+{w['p50_added_ms']:.2f} ms)", "≤ 1.5× direct + 1 ms", ok)  # fmt: skip
        added = via["p95_ms"] - direct["p95_ms"]
        row("websocket: via jkp p95 / direct p95", f"{w['p95_vs_direct']:.2f}× (+{added:.2f} ms)")
        direct, via = w["connect_direct"], w["connect_via_jkp"]
        row(f"websocket: opening one (n={direct['n']}), straight to EG / through jkp, p50 / p95",
            f"{direct['p50_ms']:.1f} / {direct['p95_ms']:.1f} ms; "
            f"{via['p50_ms']:.1f} / {via['p95_ms']:.1f} ms")  # fmt: skip
        direct, via = w["connect_first_info_direct"], w["connect_first_info_via_jkp"]
        row("websocket: opening one + its first kernel_info, straight to EG / through jkp, "
            "p50 / p95", f"{direct['p50_ms']:.1f} / {direct['p95_ms']:.1f} ms; "
            f"{via['p50_ms']:.1f} / {via['p95_ms']:.1f} ms")  # fmt: skip
    if "cold_path" in out:
        cold, c1 = out["cold_path"], out["rounds"]["c1"]
        ms = " / ".join(f"{cold[k]:.0f}" for k in ("min_ms", "p50_ms", "p95_ms"))
        row(f"cold path (n={cold['n']}) min / p50 / p95", f"{ms} ms")
        ratio = out["cold_vs_pop_p50"] = cold["p50_ms"] / c1["p50_ms"]
        row("cold p50 / pop p50 (c=1)", f"{ratio:.1f}×", "≥ 30×", ratio >= 30)
    s = out.get("scale")
    if s:
        pool, sw, lat = s["pool"], s["sweep"], s["sweep_latency_ms"]
        value = f"{s['fill_no_latency_s']:.1f} s ({s['fill_s']:.1f} s at {lat} ms latency)"
        row(f"sim: fill {pool} kernels, 50 starts at once", value)
        # "Bounded": at most the 50 concurrent starts jkp was given, far below the pool.
        ok = sw["duration_s"] <= 10 and sw["kernels"] == pool and sw["max_in_flight"] <= 50
        value = (
            f"{sw['duration_s']:.2f} s, {sw['kernels']} kernels, ≤ {sw['max_in_flight']} in flight"
        )
        row(f"sim: one activation sweep, {pool} pooled, {lat} ms latency", value,
            "≤ 10 s, all, ≤ 50 in flight", ok)  # fmt: skip
        value = f"{s['rss_mb']:.0f} MB (peak {s['peak_rss_mb']:.0f})"
        row(f"sim: jkp RSS, {pool} pooled", value, "≤ 150 MB", s["rss_mb"] <= 150)
        big, small = s["pop_c1_big"], s["pop_c1_small"]
        ratio = s["p50_big_vs_small"] = big["p50_ms"] / small["p50_ms"]
        value = f"{big['p50_ms']:.1f} / {small['p50_ms']:.1f} ms = {ratio:.2f}×"
        ok = ratio <= 1.5 and not (big["failed"] or small["failed"])
        row(f"sim: pop p50 c=1, {pool} vs 10 pooled", value, "≤ 1.5×", ok)
        one, three = s["replicas_1"], s["replicas_3"]
        ratio = s["replicas_3_vs_1"] = three["pops_per_s"] / one["pops_per_s"]
        value = f"{three['pops_per_s']:.0f} / {one['pops_per_s']:.0f} pops/s = {ratio:.2f}×"
        ok = ratio >= 2 and not (one["failed"] or three["failed"])
        row("sim: pops/s c=32, 3 replicas vs 1", value, "≥ 2×", ok)
    return rows


def report(out: dict) -> str:
    m = out["machine"]
    eg = m.get("enterprise_gateway") or {}
    quick = "; QUICK run (small N, not the defined figures)" if out["quick"] else ""
    busy = m.get("busy_before_start", 0)
    warning = [f"WARNING: {busy:.0%} of the CPUs were busy before the run began; that load "
               "skews every figure.", ""] if busy > 0.15 else []  # fmt: skip
    text = [
        f"machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; "
        f"EG {eg.get('gateway_version', '?')} (jupyter_server {eg.get('version', '?')}); "
        f"jkp {m['jkp_git']}{quick}",
        "",
        *warning,
        "| figure | value | target | result |",
        "|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in checks(out)),
        "",
        "Notes: each pop is timed in the client from send to full response (a new TCP connection "
        "per request, but in the steady rounds marked 'connection kept', which send every "
        "request on one connection kept open; the steady rounds use a minimal HTTP client; "
        "client, jkp, Redis, EG and the kernels share the same cores). The steady rounds' "
        "requests come as a Poisson process; each floor sample "
        "is taken at a uniformly random moment before one. jkp "
        "starts replacements refill_delay (default 1 s) after a burst's first pop; each round "
        "is shorter, so its pops do not compete with kernel starts (~0.4 s CPU each here). The "
        "'refill at once' round (refill_delay=0) shows what they cost when they do. "
        "With few samples p99 is close to the maximum. Gateway creates are timed like pops (a "
        "new connection each); a cold one until the kernel answers kernel_info and has entered "
        "its directory, what a warm create's answer already includes. Websocket round trips "
        "run on two websockets to one kernel open at once, so each sees the other's iopub "
        "traffic; TCP_QUICKACK is re-armed before every read on every client socket."
        + (
            " Scale (sim) figures come from bench/gateway_simulator.py, not EG: the activation "
            f"sweep from one that answers after {SWEEP_LATENCY_MS} ms (so the requests jkp keeps "
            "in flight show), the rest from one that answers at once."
            if "scale" in out
            else ""
        ),
    ]
    events = out.get("real_stack_events")
    if events:
        text.append(
            f"  real stack: {events['kernel_starts_failed']} kernel starts failed in jkp; EG "
            f"logged 'Address already in use' {events['eg_port_in_use']} times"
        )
    rounds = [(f"real {k}", r) for k, r in out.get("rounds", {}).items()]
    rounds += [(f"sim {k}", r) for k, r in out.get("scale", {}).items() if isinstance(r, dict)
               and "cpu" in r]  # fmt: skip
    for key, r in rounds:
        cpu = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in r["cpu"].items() if k.endswith("_s"))
        pool = ""
        if "pool_after_round" in r:
            pool = f"; pool after: {r['pool_after_round']}, full again {r['refill_s']:.1f} s later"
        before = r["cpu"].get("machine_busy_1s_before")
        before = "" if before is None else f" ({before:.0%} in the 1 s before)"
        text.append(f"  {key}: machine CPU busy {r['cpu']['machine_busy']:.0%}{before}, "
                    f"CPU seconds: {cpu}{pool}")  # fmt: skip
    return "\n".join(text)


async def main_async(args, work: Path, stack: Stack, out: dict) -> None:
    # Anything else running (a test suite, a build) skews every figure: say so in the report.
    out["machine"]["busy_before_start"] = await machine_busy(2.0)
    await real_stack(args, work, stack, out)
    if not (args.skip_scale or args.steady_only):
        await scale(args, work, stack, out)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops us as Ctrl-C does: through main's finally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run of ~1 min")
    parser.add_argument(
        "--json",
        help="where to write all figures (default .stack/bench-results.json; with --traces "
        ".stack/bench-traces.json)",
    )
    parser.add_argument("--skip-scale", action="store_true", help="only the real stack")
    parser.add_argument(
        "--steady-only", action="store_true", help="only the steady-state round beside EG's floor"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the logs (work dir) after success"
    )
    traces.add_arguments(parser)
    args = parser.parse_args()
    if args.traces:
        return traces.main(args)
    args.json = args.json or str(REPO / ".stack" / "bench-results.json")

    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="jkp-bench-"))
    (work / "shared").mkdir()
    stack, started = Stack(), time.monotonic()
    out = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }
    return run_and_report(
        main_async(args, work, stack, out),
        work,
        stack,
        out,
        started,
        report,
        Path(args.json),
        args.keep,
    )


def run_and_report(
    rounds, work: Path, stack: Stack, out: dict, started: float, report_of, path: Path, keep: bool
) -> int:
    """Run a benchmark's ``rounds`` (a coroutine filling ``out``), stop everything it started,
    then print ``report_of(out)`` and write ``out`` to ``path``; the exit status."""
    ok = False
    try:
        asyncio.run(rounds)
        ok = True
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
    except Exception:
        traceback.print_exc()
    finally:
        log("stopping everything")
        stack.stop_all()
    out["duration_s"] = time.monotonic() - started
    if not ok:
        print(f"bench: failed; logs kept in {work}", file=sys.stderr)
        return 1
    print()
    print(report_of(out))
    print(f"\ntotal run time {out['duration_s']:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"figures written to {path}")
    if keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The steady state users see: pops and warm creates one at a time, refills running, each
beside EG's floor and the floors of the hops a request adds (HTTP, Redis)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from pathlib import Path

import redis.asyncio as aioredis
from gateway_rounds import delete_kernel, gateway_env
from harness import (
    HOST,
    KERNEL_NAME,
    PYTHON,
    REPO,
    Jkp,
    Proc,
    RedisServer,
    Stack,
    cpu_seconds,
    free_port,
    log,
    metric_total,
    summary,
)
from kernel_channels import (
    arm_set_up,
    delete_kernels,
    floor_channel,
    floor_round_trip,
    straight_set_up,
)
from localstack import EnterpriseGateway
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders


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

"""jkp as a drop-in gateway: warm creates through EG's kernels API on jkp vs cold creates on
EG, and kernel_info round trips through jkp's websocket bridge vs straight to EG."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from harness import KERNEL_NAME, Jkp, metric_total, summary
from kernel_channels import ShellChannel, kernel_info_round_trip, shell_request, ws_url
from localstack import EnterpriseGateway, RedisServer
from pop_rounds import cold_path, mean_step_ms, pop_steps
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

# A create through the gateway needs a user EG lets run kernels (it refuses root, which this
# machine runs as); not the pool's own (jovyan), as a client's would not be.
GATEWAY_USER = "alice"


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

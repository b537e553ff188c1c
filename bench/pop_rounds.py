"""Pops from a full pool (latency, throughput, where the CPU went) and the cold path a user
takes without jkp."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

from harness import KERNEL_NAME, Jkp, cpu_seconds, get_json, machine_jiffies, summary
from kernel_channels import delete_kernels, kernel_info_round_trip, shell_request, ws_url
from localstack import EnterpriseGateway
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect


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


def mean_step_ms(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per pop step between two readings of jkp_pop_step_seconds (sum, count)."""
    return {
        step: 1000 * (s - before.get(step, (0.0, 0))[0]) / max(c - before.get(step, (0.0, 0))[1], 1)
        for step, (s, c) in after.items()
    }


async def pop_steps(jkp: Jkp) -> dict[str, tuple[float, int]]:
    """(seconds, count) of each step of the pops jkp served so far, from its /metrics."""
    text = (await AsyncHTTPClient().fetch(jkp.url + "/metrics")).body.decode()
    steps: dict[str, list[float]] = {}
    for name, step, value in re.findall(
        r'^jkp_pop_step_seconds_(sum|count){pool="[^"]*",step="([a-z_]+)"} (\S+)$', text, re.M
    ):
        steps.setdefault(step, [0.0, 0.0])[0 if name == "sum" else 1] += float(value)
    return {step: (s, int(c)) for step, (s, c) in steps.items()}

"""Handing kernels out when things go wrong, against a real Redis and a real EG: a hung kernel,
callers that hang up, retried pops, a broken share, kernels EG shut down after the hand-out."""

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from jkp.services.pool.pop import SET_UP_FAILURES_BEFORE_PAUSE, SetUpGuard, SetUpPausedError
from tests.conftest import kernel_pid, localstack, metric, run_in_kernel, wait_until


async def pop_end_kernel(jkp):
    """The id of the kernel the next pop takes."""
    return json.loads((await jkp.store.idle_models())[-1])["id"]


async def pops_counted(jkp, outcome):
    """jkp_pops_total for ``outcome``, as a Prometheus scrape reads it."""
    return await metric(jkp, f'jkp_pops_total{{outcome="{outcome}",pool="python_kubernetes"}}')


async def settled(jkp, target):
    counts = await jkp.store.counts()
    retiring = await jkp.store.retiring_ids()
    return (counts["idle"], counts["starting"], counts["claimed"], retiring) == (target, 0, 0, [])


async def test_hung_kernel_at_the_pop_end_fails_one_pop_is_shut_down_and_pops_go_on(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    await jkp.wait_for_idle(3)
    hung = await pop_end_kernel(jkp)
    pid = kernel_pid(hung)
    os.kill(pid, signal.SIGSTOP)
    try:
        answers, took = [], []
        for n in range(3):
            started = time.monotonic()
            answers.append(await jkp.pop(f"user{n}"))
            took.append(time.monotonic() - started)
        print(f"pops with a hung kernel at the pop end: {[round(t, 3) for t in took]} s")
        # The pop that took it fails (a request costs one kernel at most); the next go on.
        assert [status for status, _ in answers] == [503, 200, 200]
        assert answers[0][1]["reason"] == "Kernel failed"
        served = [model["id"] for _, model in answers[1:]]
        assert hung not in served and len(set(served)) == 2
        # It left the pool at once, and EG shuts it down.
        assert hung not in await jkp.idle_ids()
        await wait_until(lambda: hung not in gateway.list_kernel_ids(), 30, "hung kernel shut down")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert took[0] < 2.5  # the set-up's timeout plus asking EG, not a hang
    assert hung not in await jkp.store.handed_out()


@pytest.mark.parametrize("key", [None, "stuck-1"])
async def test_kernel_that_answers_its_set_up_but_never_gets_idle_is_not_handed_out(
    redis_server, gateway, jkp_factory, key
):
    # The hand-over runs beside the wait for the kernel's idle status: a kernel that hangs in
    # between (here in ipykernel's flush of stdout, once it is in the user's directory) was
    # recorded as handed out, and must be taken back; the pop fails. A pop with an
    # Idempotency-Key is handed over only after the idle status, so a retry never gets such a
    # kernel.
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    await jkp.wait_for_idle(3)
    stuck = await pop_end_kernel(jkp)
    await run_in_kernel(
        gateway,
        stuck,
        "import os, sys, time\n"
        "def _flush(cwd=os.getcwd(), flush=sys.stdout.flush):\n"
        "    if os.getcwd() != cwd:\n"
        "        time.sleep(3600)\n"
        "    flush()\n"
        "sys.stdout.flush = _flush\n",
    )
    headers = {} if key is None else {"Idempotency-Key": key}
    body = json.dumps({"userId": "zt"})
    started = time.monotonic()
    status, error = await jkp.request("POST", "/api/kernels/pop/", body, headers)
    took = time.monotonic() - started
    assert status == 503 and error["reason"] == "Kernel failed"
    assert took < 4  # the set-up's timeout, not a hang
    assert stuck not in await jkp.store.handed_out()
    assert stuck not in await jkp.idle_ids()
    # Handed over only once idle: with a key it never was, so it was only ever claimed.
    why = "not idle after its set-up" if key is None else "did not answer its set-up"
    removed = f"Kernel {stuck} removed ({why}: "
    await wait_until(lambda: jkp.logged(removed), 30, "stuck kernel shut down")
    assert stuck not in gateway.list_kernel_ids()
    # The metric counts it by its reason alone; the error's text (with ids) is in the log.
    assert await removals(jkp) == {why: 1}
    # A retry (with the key, too) gets another kernel, and that one again.
    status, model = await jkp.request("POST", "/api/kernels/pop/", body, headers)
    assert status == 200 and model["id"] != stuck
    if key is not None:
        assert await jkp.request("POST", "/api/kernels/pop/", body, headers) == (200, model)


async def removals(jkp):
    """jkp_kernels_removed_total of the pool by its reason label, as a scrape reads it."""
    response = await AsyncHTTPClient().fetch(jkp.url + "/metrics")
    counts = {}
    for line in response.body.decode().splitlines():
        if line.startswith("jkp_kernels_removed_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(value)
    return counts


async def test_callers_that_hang_up_mid_pop_cost_no_kernel(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    await jkp.wait_for_idle(3)
    port = int(jkp.url.rsplit(":", 1)[1])
    body = json.dumps({"userId": "gone"}).encode()
    request = (
        b"POST /api/kernels/pop/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def hang_up_after_sending():
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.005)
        writer.close()

    await asyncio.gather(*(hang_up_after_sending() for _ in range(3)))
    await wait_until(lambda: pops_counted_is(jkp, "abandoned", 3), 15, "3 abandoned pops")
    # Nobody got an answer, so nobody holds a kernel: EG runs exactly the pool.
    await wait_until(lambda: settled(jkp, 3), 60, "the pool to settle")
    assert await jkp.store.handed_out() == {}
    await wait_until(lambda: _eg_runs_only(gateway, jkp), 30, "EG to run only the pooled kernels")


async def pops_counted_is(jkp, outcome, count):
    return await pops_counted(jkp, outcome) == count


async def _eg_runs_only(gateway, jkp):
    return sorted(gateway.list_kernel_ids()) == sorted(await jkp.idle_ids())


async def test_caller_that_hangs_up_while_waiting_leaves_the_kernel_in_the_pool(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=1",
        "--PoolManager.refill_delay=600",
        "--PoolManager.pop_timeout=30",
    )
    await jkp.wait_for_idle(1)
    status, first = await jkp.pop("first")
    assert status == 200
    # The pool is empty: this caller waits (which starts a kernel), then gives up.
    port = int(jkp.url.rsplit(":", 1)[1])
    body = json.dumps({"userId": "gone"}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/kernels/pop/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await wait_until(lambda: pops_counted_is(jkp, "abandoned", 1), 10, "the abandoned pop")
    # The kernel started for it stays in the pool, set up for nobody.
    [kept] = await jkp.wait_for_idle(1, timeout=30)
    assert list(await jkp.store.handed_out()) == [first["id"]]
    assert sorted(gateway.list_kernel_ids()) == sorted([first["id"], kept])


async def test_pop_repeated_with_its_idempotency_key_gets_the_same_kernel(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=3")
    await jkp.wait_for_idle(3)

    async def pop(user_id, key):
        return await jkp.request(
            "POST",
            "/api/kernels/pop/",
            json.dumps({"userId": user_id}),
            headers={"Idempotency-Key": key},
        )

    status, first = await pop("zt", "retry-1")
    assert status == 200
    status, again = await pop("zt", "retry-1")
    assert status == 200 and again == first
    assert list(await jkp.store.handed_out()) == [first["id"]]
    status, other = await pop("zt", "retry-2")
    assert status == 200 and other["id"] != first["id"]
    status, error = await pop("someone-else", "retry-1")
    assert status == 409 and error["reason"] == "Idempotency-Key conflict"
    assert sorted(await jkp.store.handed_out()) == sorted([first["id"], other["id"]])
    # Without the header nothing changes: each pop takes a kernel.
    assert (await jkp.pop("zt"))[1]["id"] not in (first["id"], other["id"])


async def test_an_idempotency_key_is_one_request_across_pools_and_bodies(
    redis_server, gateway_factory, jkp_factory, monkeypatch
):
    gateway = gateway_factory(more_kernel_names=("python_pandas",))
    pools = {"python_kubernetes": {"size": 1}, "python_pandas": {"size": 1}}
    monkeypatch.setenv("JKP_POOLS", json.dumps(pools))
    jkp = await jkp_factory(redis_server, gateway)
    for pool in jkp.app.pool_registry.pools.values():
        await wait_until(lambda p=pool: _idle_is(p, 1), 60, "both pools filled")

    async def pop(key, **body):
        return await jkp.request(
            "POST", "/api/kernels/pop/", json.dumps(body), headers={"Idempotency-Key": key}
        )

    status, first = await pop("req-1", userId="zt")
    assert status == 200
    assert await pop("req-1", userId="zt", kernelName="python_kubernetes") == (200, first)
    for other in (
        {"userId": "zt", "kernelName": "python_pandas"},
        {"userId": "zt", "env": {"KERNEL_FOO": "bar"}},
        {"userId": "someone-else"},
    ):
        status, error = await pop("req-1", **other)
        assert status == 409 and error["reason"] == "Idempotency-Key conflict", other
    # Nothing was handed out for them: the pandas pool still has its kernel.
    assert list(await jkp.store.handed_out()) == [first["id"]]
    assert await _idle_is(jkp.app.pool_registry.pools["python_pandas"], 1)


async def _idle_is(pool, count):
    return (await pool.store.counts())["idle"] == count


@pytest.mark.parametrize("key", ["", "k" * 129, "tab\there", "é"])
async def test_bad_idempotency_key_is_a_400_and_takes_no_kernel(
    redis_server, gateway, jkp_factory, key
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    status, error = await jkp.request(
        "POST",
        "/api/kernels/pop/",
        json.dumps({"userId": "zt"}),
        headers={"Idempotency-Key": key},
    )
    assert status == 400 and error["reason"] == "Invalid Idempotency-Key"
    assert await jkp.idle_ids() == [pooled]


async def test_kernel_eg_shut_down_after_the_hand_out_is_forgotten(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.check_task_interval=1"
    )
    await jkp.wait_for_idle(1)
    status, model = await jkp.pop("zt")
    assert status == 200
    assert (await jkp.request("GET", "/api/pool"))[1]["handed"] == 1
    localstack.http_request("DELETE", f"{gateway.url}/api/kernels/{model['id']}")
    await wait_until(lambda: _handed_count_is(jkp, 0), 15, "the handed-out kernel forgotten")


async def _handed_count_is(jkp, count):
    return (await jkp.request("GET", "/api/pool"))[1]["handed"] == count


class ReadOnly:
    """Makes a directory read-only even for root (immutable), and writable again after."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        if subprocess.run(["chattr", "+i", str(self.path)], capture_output=True).returncode:
            if os.geteuid() == 0:
                pytest.fail("cannot make the share read-only: chattr +i failed as root")
            self.path.chmod(0o555)
        return self

    def __exit__(self, *exc):
        subprocess.run(["chattr", "-i", str(self.path)], capture_output=True)
        self.path.chmod(0o755)


async def test_read_only_share_costs_one_kernel_per_pop_then_pauses_hand_outs(
    redis_server, gateway, jkp_factory, shared_dir
):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=4", "--PoolManager.refill_delay=600"
    )
    pooled = await jkp.wait_for_idle(4)
    with ReadOnly(shared_dir):
        for n in range(SET_UP_FAILURES_BEFORE_PAUSE):
            status, error = await jkp.pop(f"user{n}")
            assert status == 500 and error["reason"] == "Set-up failed"
            assert "not because of the user" in error["message"]
            # One kernel per failed pop, no more.
            assert len(await jkp.idle_ids()) == len(pooled) - n - 1
        status, error = await jkp.pop("user-next")
        assert status == 503 and error["reason"] == "Set-up paused"
        assert len(await jkp.idle_ids()) == len(pooled) - SET_UP_FAILURES_BEFORE_PAUSE
        # The share fails every replica alike: readiness would take them all out of service.
        assert (await jkp.request("GET", "/api/ready"))[0] == 200
    assert await jkp.store.handed_out() == {}


def test_set_up_guard_pauses_after_failures_in_a_row_and_the_pause_grows():
    guard = SetUpGuard()
    for _ in range(SET_UP_FAILURES_BEFORE_PAUSE - 1):
        guard.failed(OSError("Read-only file system"))
    guard.check()  # not yet
    guard.failed(OSError("Read-only file system"))
    with pytest.raises(SetUpPausedError, match="Read-only file system"):
        guard.check()
    first = guard.paused_for
    guard.failed(OSError("still read-only"))
    assert guard.paused_for > first
    guard.succeeded()
    guard.check()
    assert guard.why_paused is None


async def keep_busy(gateway, kernel_id, seconds):
    """Have a kernel run ``time.sleep(seconds)``, sent straight to EG: requests queue behind."""
    session = Session(username="test-client")
    msg = session.msg("execute_request", {"code": f"import time; time.sleep({seconds})"})
    msg["channel"] = "shell"
    url = gateway.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    conn = await websocket_connect(url)
    try:
        await conn.write_message(json.dumps(msg, default=json_default))
        while True:  # the kernel took it once it says it is busy with it
            reply = json.loads(await conn.read_message())
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                if reply["msg_type"] == "status":
                    return
    finally:
        conn.close()


@pytest.mark.parametrize("request_kind", ["pop", "create"])
async def test_kernels_that_fail_their_set_up_cost_a_request_one_kernel_at_most(
    redis_server, gateway, jkp_factory, request_kind
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=3",
        "--PoolManager.kernel_request_timeout=0.5",
        "--PoolManager.activation_interval=3600",  # no activation meets the busy kernels
        "--PoolManager.refill_delay=60",  # the pool is not refilled under the request
    )
    pooled = await jkp.wait_for_idle(3)
    for kernel_id in pooled:
        await keep_busy(gateway, kernel_id, 30)  # no set-up is answered in time

    if request_kind == "pop":
        status, answer = await jkp.pop("zt")
        assert status == 503, answer
        assert answer["reason"] == "Kernel failed"
    else:
        body = json.dumps({"name": "python_kubernetes", "env": {"KERNEL_USERNAME": "alice"}})
        status, answer = await jkp.request("POST", "/api/kernels", body)
        assert status == 201, answer  # EG's own kernel, started cold
        assert answer["id"] not in pooled

    # One kernel was shut down for the request; the two others are still pooled.
    assert len(set(await jkp.idle_ids()) & set(pooled)) == 2
    assert len(set(gateway.list_kernel_ids()) & set(pooled)) >= 2


async def test_a_pop_at_its_deadline_puts_no_set_up_kernel_back(
    redis_server, gateway, jkp_factory, shared_dir
):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.pop_timeout=0.1"
    )
    pooled = await jkp.wait_for_idle(2)
    pool_dir = await _cwd(gateway, pooled[0])

    # Redis stalls the claim past the pop's deadline: the kernel comes with no time left.
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        pop = asyncio.ensure_future(jkp.pop("late"))
        await asyncio.sleep(0.3)
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    status, answer = await pop

    assert status == 503, answer
    assert answer["reason"] == "Pool empty"  # a timeout, not EG's fault
    # The kernel was not set up: it is still pooled, in the pool's directory.
    assert sorted(await jkp.wait_for_idle(2)) == sorted(pooled)
    assert [await _cwd(gateway, kernel_id) for kernel_id in pooled] == [pool_dir, pool_dir]
    assert not (shared_dir / "late").exists()


async def _cwd(gateway, kernel_id):
    return (await run_in_kernel(gateway, kernel_id, "import os; print(os.getcwd())")).strip()

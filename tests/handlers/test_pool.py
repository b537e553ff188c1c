"""POST /api/kernels/pop/ against a real Redis and a real Enterprise Gateway."""

import datetime
import json
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import localstack, run_in_kernel, server_timing, wait_until


def _eg_model(gateway, kernel_id):
    return localstack.http_request("GET", f"{gateway.url}/api/kernels/{kernel_id}")[1]


def _when(timestamp):
    """Seconds since the epoch of an ISO 8601 timestamp as EG and kernels write them."""
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def test_pool_fills_with_ready_kernels_on_eg(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    idle = await jkp.wait_for_idle(2)
    assert sorted(idle) == sorted(gateway.list_kernel_ids())
    for model_json in await jkp.store.idle_models():
        model = json.loads(model_json)
        # Pooled only once it answered: EG reports it idle, not starting.
        assert model["execution_state"] == "idle"
        assert model["name"] == "python_kubernetes"


async def test_pop_moves_kernel_into_user_dir(redis_server, gateway, jkp_factory, shared_dir):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    pooled_model = json.loads((await jkp.store.idle_models())[0])
    status, model = await jkp.pop("zt")
    assert status == 200
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["id"] == pooled
    # Idle again after the set-up, which is its last activity (what EG reports now, too).
    assert model["execution_state"] == "idle"
    assert _when(model["last_activity"]) > _when(pooled_model["last_activity"])
    eg_model = _eg_model(gateway, pooled)
    assert eg_model["execution_state"] == "idle"
    assert abs(_when(eg_model["last_activity"]) - _when(model["last_activity"])) < 1
    # jkp held a websocket to the pooled kernel; the user gets it with none left open.
    assert pooled_model["connections"] == 1 and model["connections"] == 0
    closed = lambda: _eg_model(gateway, pooled)["connections"] == 0  # noqa: E731
    await wait_until(closed, 5, "jkp's websocket closed")
    cwd = await run_in_kernel(gateway, model["id"], "import os; print(os.getcwd())")
    assert cwd.strip() == str(shared_dir / "zt")
    # Neither the warm-up before pooling nor the set-up left a name or a comm target; the one
    # comm left is the set-up's, closed to its caller, kept so the kernel can refuse another.
    left = await run_in_kernel(
        gateway,
        model["id"],
        "m = get_ipython().kernel.comm_manager; "
        "print([n for n in dir() if 'jkp' in n], list(m.comms), list(m.targets))",
    )
    assert left.strip() == f"[] ['jkp-set-up-{pooled}'] []"
    # The kernel is the user's now: recorded as handed out, never back in the pool.
    assert (await jkp.store.handed_out())[pooled]["user_id"] == "zt"
    assert pooled not in await jkp.idle_ids()


async def test_pop_with_and_without_trailing_slash(redis_server, gateway, jkp_factory, shared_dir):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    for path, user in (("/api/kernels/pop/", "a@b.c"), ("/api/kernels/pop", "user-2")):
        status, model = await jkp.request("POST", path, json.dumps({"userId": user}))
        assert status == 200, model
        cwd = await run_in_kernel(gateway, model["id"], "import os; print(os.getcwd())")
        assert cwd.strip() == str(shared_dir / user)


async def test_a_pop_tells_its_caller_where_its_time_went(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    await jkp.wait_for_idle(1)
    started = time.perf_counter()
    response = await jkp.fetch("POST", "/api/kernels/pop/", json.dumps({"userId": "zt"}))
    took_ms = 1000 * (time.perf_counter() - started)
    assert response.code == 200
    steps = server_timing(response)
    assert list(steps) == ["claim", "set_up", "hand_over", "total"]
    assert all(ms > 0 for ms in steps.values())
    total = steps.pop("total")
    assert sum(steps.values()) < total < took_ms
    # The set-up is a round trip through EG to the kernel: more than a Redis script.
    assert steps["set_up"] > steps["claim"]
    # A refused pop took no steps worth reporting.
    refused = await jkp.fetch("POST", "/api/kernels/pop/", json.dumps({"userId": "../x"}))
    assert refused.code == 400 and "Server-Timing" not in refused.headers


async def test_pool_refills_after_pop(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    before = await jkp.wait_for_idle(2)
    status, model = await jkp.pop("zt")
    assert status == 200
    after = await jkp.wait_for_idle(2)
    assert model["id"] not in after
    assert len(set(after) - set(before)) == 1
    # EG runs exactly the pooled kernels plus the one handed out.
    assert sorted(gateway.list_kernel_ids()) == sorted([*after, model["id"]])


async def test_refill_waits_refill_delay_after_a_burst_of_pops(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=3", "--PoolManager.refill_delay=5"
    )
    await jkp.wait_for_idle(3)
    for user in ("a", "b"):
        assert (await jkp.pop(user))[0] == 200
    # Within the delay no replacement is started: the burst has EG to itself.
    counts = await jkp.store.counts()
    assert (counts["idle"], counts["starting"], counts["handed"]) == (1, 0, 2)
    assert len(gateway.list_kernel_ids()) == 3
    # After it, both are replaced.
    await jkp.wait_for_idle(3, timeout=60)
    assert len(gateway.list_kernel_ids()) == 5


async def test_pop_on_an_empty_pool_starts_a_kernel_at_once(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=1",
        "--PoolManager.refill_delay=600",
        "--PoolManager.pop_timeout=60",
    )
    await jkp.wait_for_idle(1)
    assert (await jkp.pop("a"))[0] == 200
    # The pool is empty and a user waits: no refill_delay for that.
    status, model = await jkp.pop("b")
    assert status == 200
    assert model["id"] in gateway.list_kernel_ids()
    # A miss: it is counted as a pop that waited; the first one was a hit.
    metrics = (await AsyncHTTPClient().fetch(jkp.url + "/metrics")).body.decode()
    assert 'jkp_pop_waits_total{pool="python_kubernetes"} 1.0' in metrics.splitlines()


async def test_empty_pool_answers_503_after_the_timeout(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=0", "--PoolManager.pop_timeout=1"
    )
    started = time.monotonic()
    status, body = await jkp.pop("zt")
    waited = time.monotonic() - started
    assert status == 503
    assert body["reason"] == "Pool empty" and "No kernel available" in body["message"]
    assert 1 <= waited < 5


async def test_pop_waits_for_a_kernel_being_started(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--PoolManager.pop_timeout=30"
    )
    # Straight after start-up the pool is still filling: the pop waits instead of failing.
    status, model = await jkp.pop("zt")
    assert status == 200
    assert model["id"] in gateway.list_kernel_ids()


BAD_BODIES = [
    pytest.param(b"not json", "Invalid JSON", id="not-json"),
    pytest.param(b"", "Invalid JSON", id="empty-body"),
    pytest.param(b'["zt"]', "Invalid JSON", id="not-an-object"),
    pytest.param(b"{}", "Invalid userId", id="no-userId"),
    pytest.param(b'{"userId": null}', "Invalid userId", id="null"),
    pytest.param(b'{"userId": 42}', "Invalid userId", id="number"),
    pytest.param(b'{"userId": ""}', "Invalid userId", id="empty"),
    pytest.param(b'{"userId": "."}', "Invalid userId", id="dot"),
    pytest.param(b'{"userId": ".."}', "Invalid userId", id="dotdot"),
    pytest.param(b'{"userId": "../etc"}', "Invalid userId", id="traversal"),
    pytest.param(b'{"userId": "a/b"}', "Invalid userId", id="slash"),
    pytest.param(b'{"userId": "zt\\nimport os"}', "Invalid userId", id="newline"),
    pytest.param(b'{"userId": "zt; rm -rf /"}', "Invalid userId", id="shell"),
    pytest.param(b'{"userId": "%cd /"}', "Invalid userId", id="magic"),
    pytest.param(json.dumps({"userId": "a" * 129}).encode(), "Invalid userId", id="too-long"),
]


@pytest.mark.parametrize("body, reason", BAD_BODIES)
async def test_bad_input_answers_400_and_takes_no_kernel(
    redis_server, gateway, jkp_factory, shared_dir, body, reason
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    status, error = await jkp.request(
        "POST", "/api/kernels/pop/", body, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert error["reason"] == reason and error["message"]
    assert await jkp.idle_ids() == [pooled]
    assert list(shared_dir.iterdir()) == []


async def test_user_dir_leading_out_of_the_share_is_refused(
    redis_server, gateway, jkp_factory, shared_dir, tmp_path
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    pooled = await jkp.wait_for_idle(2)
    outside = tmp_path / "outside"
    outside.mkdir()
    (shared_dir / "evil").symlink_to(outside)
    status, error = await jkp.pop("evil")
    assert status == 403
    assert "confinement check" in error["message"] and "not inside" in error["message"]
    # The refusal came before the set-up changed anything: the kernel went back to the pool.
    assert await jkp.store.handed_out() == {}
    assert sorted(await jkp.idle_ids()) == sorted(pooled)
    await _wait_for_eg_kernels(gateway, pooled)
    assert list(outside.iterdir()) == []
    # Others are still served.
    status, model = await jkp.pop("zt")
    assert status == 200


async def _wait_for_eg_kernels(gateway, expected):
    from tests.conftest import wait_until

    await wait_until(
        lambda: sorted(gateway.list_kernel_ids()) == sorted(expected), 30, f"EG to run {expected}"
    )


async def test_a_user_dir_another_users_kernel_linked_to_its_own_is_refused(
    redis_server, gateway, jkp_factory, shared_dir
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    status, bob = await jkp.pop("bob")
    assert status == 200
    await run_in_kernel(gateway, bob["id"], "import os; os.symlink(os.getcwd(), '../alice')")
    pooled = await jkp.wait_for_idle(2)

    status, error = await jkp.pop("alice")

    assert status == 403
    assert error["reason"] == "User directory refused"
    assert "not inside" in error["message"]
    assert set(await jkp.store.handed_out()) == {bob["id"]}
    # The kernel the pop took went back to the pool as it was: where EG started it, not in
    # the share (bob's directory), and not marked as set up.
    assert sorted(await jkp.idle_ids()) == sorted(pooled)
    for kernel_id in pooled:
        code = "import os, sys; print(os.getcwd(), hasattr(sys, '_jkp_set_up'))"
        cwd, set_up = (await run_in_kernel(gateway, kernel_id, code)).split()
        assert not cwd.startswith(str(shared_dir)) and set_up == "False"
    # Others are still served, each in a directory of their own.
    status, carol = await jkp.pop("carol")
    assert status == 200
    out = await run_in_kernel(gateway, carol["id"], "import os; print(os.getcwd())")
    assert out.strip() == str(shared_dir / "carol")

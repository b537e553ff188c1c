"""Several pools, one per kernel spec, against a real Redis and a real EG with two specs."""

import asyncio
import json
import re

import pytest
from tornado.httpclient import AsyncHTTPClient

from jkp.app import JKPManagerApp
from tests.conftest import localstack, metric, run_in_kernel, wait_until

PANDAS = "python_pandas"


@pytest.fixture
def two_spec_gateway(gateway_factory):
    return gateway_factory(more_kernel_names=(PANDAS,))


async def idle_count(pool):
    return (await pool.store.counts())["idle"]


async def test_two_pools_fill_route_and_preload(
    redis_server, two_spec_gateway, jkp_factory, monkeypatch, shared_dir
):
    monkeypatch.setenv(
        "JKP_POOLS",
        json.dumps(
            {
                "python_kubernetes": {"size": 1},
                PANDAS: {"size": 2, "init_code": "import json as preloaded_json"},
            }
        ),
    )
    jkp = await jkp_factory(redis_server, two_spec_gateway)
    pools = jkp.app.pool_registry.pools
    await wait_until(lambda: _sizes_are(pools, {"python_kubernetes": 1, PANDAS: 2}), 60, "fill")
    # Each pool at its own Redis key; the default one at JKP_REDIS_KEY, as before pools.
    assert pools["python_kubernetes"].store.keys.idle == "test:kernels:idle"
    assert pools[PANDAS].store.keys.idle == f"test:kernels:idle:pool:{PANDAS}"

    status, model = await _pop(jkp, "zt", PANDAS)
    assert status == 200 and model["name"] == PANDAS
    # What init_code defined is there for the user; the pop's set-up still ran.
    out = await run_in_kernel(
        two_spec_gateway, model["id"], "import os; print(preloaded_json.__name__, os.getcwd())"
    )
    assert out.split() == ["json", str(shared_dir / "zt")]

    status, model = await _pop(jkp, "zt2", None)  # no kernelName: the default pool
    assert status == 200 and model["name"] == "python_kubernetes"

    status, error = await _pop(jkp, "zt", "r_kubernetes")
    assert status == 400 and error["reason"] == "Unknown kernelName"
    assert "python_kubernetes" in error["message"] and PANDAS in error["message"]

    status, pool_status = await jkp.request("GET", "/api/pool")
    assert set(pool_status["pools"]) == {"python_kubernetes", PANDAS}
    assert pool_status["pools"][PANDAS]["target"] == 2
    response = await AsyncHTTPClient().fetch(jkp.url + "/metrics")
    text = response.body.decode()
    assert re.search(rf'^jkp_pops_total{{outcome="served",pool="{PANDAS}"}} 1.0$', text, re.M)
    assert re.search(r'^jkp_target_kernels{pool="python_kubernetes"} 1.0$', text, re.M)


async def _sizes_are(pools, sizes):
    for name, size in sizes.items():
        counts = await pools[name].store.counts()
        if (counts["idle"], counts["starting"]) != (size, 0):
            return False
    return True


async def _pop(jkp, user_id, kernel_name):
    body = {"userId": user_id}
    if kernel_name is not None:
        body["kernelName"] = kernel_name
    return await jkp.request("POST", "/api/kernels/pop/", json.dumps(body))


async def test_failing_init_code_fails_starts_and_is_logged_once(
    redis_server, two_spec_gateway, jkp_factory, monkeypatch
):
    monkeypatch.setenv(
        "JKP_POOLS",
        json.dumps(
            {
                "python_kubernetes": {"size": 1},
                PANDAS: {"size": 1, "init_code": "import no_such_module", "max_start_backoff": 0.2},
            }
        ),
    )
    jkp = await jkp_factory(redis_server, two_spec_gateway)
    pools = jkp.app.pool_registry.pools
    await wait_until(
        lambda: pools[PANDAS].metrics.kernel_starts.labels("failed")._value.get() >= 3,
        60,
        "3 failed starts",
    )
    assert len(jkp.logged(f"init_code of pool {PANDAS} fails")) == 1
    assert await idle_count(pools[PANDAS]) == 0
    # The other pool is not held up by it.
    assert (await _pop(jkp, "zt", None))[0] == 200


@pytest.mark.parametrize(
    "pools, message",
    [
        ({"python_kubernetes": {"sise": 1}}, "pools['python_kubernetes']: unknown option 'sise'"),
        ({"python_kubernetes": {"size": -1}}, "pools['python_kubernetes']"),
        ({"python_kubernetes": {"size": "many"}}, "pools['python_kubernetes']"),
        ({"r_kubernetes": {"size": 1}}, "no pool named 'python_kubernetes'"),
        ({"python_kubernetes": 3}, "must be a dict of options"),
        (
            {"python_kubernetes": {"min": 3, "size": 2}},
            "min_pending_kernels (3) must not exceed max_pending_kernels (2)",
        ),
    ],
)
def test_bad_pools_stop_start_up_naming_pool_and_option(pools, message, monkeypatch):
    monkeypatch.setenv("JKP_POOLS", json.dumps(pools))
    app = JKPManagerApp()
    logged = []
    app.log.critical = lambda fmt, *args: logged.append(fmt % args)
    with pytest.raises(SystemExit):
        app.initialize([])
    assert message in logged[0]


async def test_pool_of_a_kernel_spec_eg_lacks_stops_start_up(
    redis_server, gateway, monkeypatch, shared_dir
):
    monkeypatch.setenv("JKP_POOLS", json.dumps({"python_kubernetes": {}, "r_kubernetes": {}}))
    app = JKPManagerApp()
    app.initialize(
        [
            f"--port={localstack.free_port()}",
            f"--RedisStore.redis_url={redis_server.url}",
            f"--GatewayClient.url={gateway.url}",
            f"--PoolManager.working_dir={shared_dir}",
        ]
    )
    logged = []
    app.log.critical = lambda fmt, *args: logged.append(fmt % args)
    with pytest.raises(SystemExit):
        await app.start_services()
    assert "['r_kubernetes']: not kernel specs Enterprise Gateway has" in logged[0]


def pools_env(monkeypatch, pandas_init, default_size=1, **pandas):
    monkeypatch.setenv(
        "JKP_POOLS",
        json.dumps(
            {
                "python_kubernetes": {"size": default_size},
                PANDAS: {"size": 2, "init_code": pandas_init, **pandas},
            }
        ),
    )


async def idle_ids(pool):
    return sorted(json.loads(m)["id"] for m in await pool.store.idle_models())


async def test_changed_init_code_rolls_over_that_pool_only(
    redis_server, two_spec_gateway, jkp_factory, monkeypatch
):
    pools_env(monkeypatch, "generation = 1")
    first = await jkp_factory(redis_server, two_spec_gateway)
    old = first.app.pool_registry.pools
    await wait_until(lambda: _sizes_are(old, {"python_kubernetes": 1, PANDAS: 2}), 60, "fill")
    kept, replaced = await idle_ids(old["python_kubernetes"]), await idle_ids(old[PANDAS])
    await first.stop()

    pools_env(monkeypatch, "generation = 2")
    second = await jkp_factory(
        redis_server, two_spec_gateway, "--PoolManager.check_task_interval=0.5"
    )
    new = second.app.pool_registry.pools
    await wait_until(lambda: _sizes_are(new, {"python_kubernetes": 1, PANDAS: 2}), 60, "refill")
    await wait_until(
        lambda: not set(two_spec_gateway.list_kernel_ids()) & set(replaced), 30, "old ones gone"
    )
    assert await idle_ids(new["python_kubernetes"]) == kept
    assert not set(await idle_ids(new[PANDAS])) & set(replaced)
    status, model = await _pop(second, "zt", PANDAS)
    assert status == 200
    assert await run_in_kernel(two_spec_gateway, model["id"], "print(generation)") == "2\n"


async def test_replicas_of_two_specs_in_a_rolling_update_do_not_churn(
    redis_server, two_spec_gateway, jkp_factory, monkeypatch
):
    fast = "--PoolManager.check_task_interval=0.3"
    pools_env(monkeypatch, "generation = 1", default_size=0)
    old_replica = await jkp_factory(redis_server, two_spec_gateway, fast)
    pools_env(monkeypatch, "generation = 2", default_size=0)
    new_replica = await jkp_factory(redis_server, two_spec_gateway, fast)
    pool = new_replica.app.pool_registry.pools[PANDAS]
    await wait_until(lambda: _count_is(pool, 4), 60, "both specs' pools full")
    await asyncio.sleep(3)  # ten checks by each replica
    starts = 'jkp_kernel_starts_total{outcome="ready",pool="python_pandas"}'
    assert [await metric(r, starts) for r in (old_replica, new_replica)] == [2.0, 2.0]
    # Each replica hands out kernels of its own spec only.
    for replica, generation in ((old_replica, "1"), (new_replica, "2")):
        status, model = await _pop(replica, "zt", PANDAS)
        assert status == 200
        assert await run_in_kernel(two_spec_gateway, model["id"], "print(generation)") == (
            generation + "\n"
        )
    # The old spec's last replica stops: its kernels go within a check or two.
    await old_replica.stop()
    await wait_until(lambda: _only_spec(pool, 2), 30, "the old spec's kernels retired")
    assert await metric(new_replica, starts) == 3.0  # the one it handed out, replaced once


async def _only_spec(pool, idle):
    models = [json.loads(m) for m in await pool.store.idle_models()]
    return await _count_is(pool, idle) and all(
        m["jkp_spec"] == pool.spec_fingerprint for m in models
    )


async def _count_is(pool, idle):
    counts = await pool.store.counts()
    return (counts["idle"], counts["starting"]) == (idle, 0)


async def test_max_kernel_age_replaces_old_kernels_never_below_size(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=2",
        "--PoolManager.max_kernel_age=2",
        "--PoolManager.check_task_interval=0.3",
    )
    first = sorted(await jkp.wait_for_idle(2))
    lowest = 2

    async def replaced():
        nonlocal lowest
        ids = await jkp.idle_ids()
        lowest = min(lowest, len(ids))
        return not set(ids) & set(first)

    await wait_until(replaced, 30, "the first kernels replaced")
    assert lowest >= 2
    await jkp.wait_for_idle(2, timeout=30)
    await wait_until(lambda: sorted(gateway.list_kernel_ids()) != first, 10, "old ones shut down")


async def test_a_pool_whose_starts_fail_leaves_the_other_serving(
    redis_server, two_spec_gateway, jkp_factory, monkeypatch
):
    # EG refuses every start of the pandas pool (403 for root), like a bad image would fail.
    monkeypatch.setenv(
        "JKP_POOLS",
        json.dumps(
            {
                "python_kubernetes": {"size": 2},
                PANDAS: {
                    "size": 2,
                    "kernel_user_name": "root",
                    "max_start_backoff": 0.5,
                    "pop_timeout": 1,
                },
            }
        ),
    )
    jkp = await jkp_factory(redis_server, two_spec_gateway)
    pools = jkp.app.pool_registry.pools
    healthy = pools["python_kubernetes"]
    await wait_until(lambda: _count_is(healthy, 2), 60, "the healthy pool full")
    took = []
    for n in range(6):
        await wait_until(lambda: _count_is(healthy, 2), 30, "the healthy pool refilled")
        started = asyncio.get_running_loop().time()
        status, model = await _pop(jkp, f"user{n}", None)
        took.append(asyncio.get_running_loop().time() - started)
        assert status == 200 and model["name"] == "python_kubernetes"
    failed = 'jkp_kernel_starts_total{outcome="failed",pool="python_pandas"}'
    print(
        f"healthy pool's pops while the other's starts fail: {[round(t * 1000) for t in took]} ms"
    )
    assert await metric(jkp, failed) >= 3
    status, error = await _pop(jkp, "zt", PANDAS)
    assert status == 503 and error["reason"] == "Pool empty"

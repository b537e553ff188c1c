"""Several pools, one per kernel spec, against a real Redis and a real EG with two specs."""

import json
import re

import pytest
from tornado.httpclient import AsyncHTTPClient

from jkp.app import JKPManagerApp
from tests.conftest import localstack, run_in_kernel, wait_until

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

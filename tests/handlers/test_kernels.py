"""EG's kernels API on jkp (a drop-in gateway): warm creates bound late, the rest passed to EG.

Real Redis, real EG, real ipykernel kernels. EG runs with EG_MIRROR_WORKING_DIRS, as jkp's
pooled kernels would be moved, and its default kernel spec is the pooled one.
"""

import asyncio
import json
import uuid

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from tests.conftest import run_in_kernel, server_timing, wait_until

USER_ENV = {"KERNEL_USERNAME": "alice"}


@pytest.fixture
async def stack(redis_server, gateway, jkp_factory):
    """A jkp with a pool of 2 in front of a real EG."""
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=2")
    await jkp.wait_for_idle(2)
    return jkp, gateway


async def create(jkp, env=None, **body):
    if env is not None:
        body["env"] = env
    return await jkp.request("POST", "/api/kernels", json.dumps(body))


async def test_create_with_its_own_id_gets_a_pooled_kernel_bound_to_it(stack, shared_dir):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    kernel_id = str(uuid.uuid4())
    workdir = shared_dir / "alice" / "project"
    env = {
        **USER_ENV,
        "KERNEL_ID": kernel_id,
        "KERNEL_WORKING_DIR": str(workdir),
        "KERNEL_FOO": 'it\'s "quoted"\nand long ' + "é" * 100,
        "NOT_PASSED": "x",
    }

    status, model = await create(jkp, env)

    assert status == 201, model
    assert model["id"] == kernel_id
    assert model["execution_state"] == "idle"
    upstream = set(gateway.list_kernel_ids())
    assert kernel_id not in upstream  # EG knows it by the pooled kernel's id
    (bound,) = pooled - set(await jkp.idle_ids())
    assert bound in upstream
    out = await run_in_kernel(
        jkp,
        kernel_id,
        "import os; print(os.getcwd()); e = os.environ; "
        "print(repr(e['KERNEL_FOO']), e['KERNEL_ID'], 'NOT_PASSED' in e)",
    )
    assert out.splitlines() == [str(workdir), f"{env['KERNEL_FOO']!r} {kernel_id} False"]

    status, got = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 200 and got["id"] == kernel_id
    status, listed = await jkp.request("GET", "/api/kernels")
    assert status == 200
    assert {m["id"] for m in listed} == {kernel_id}  # idle and starting ones are not shown

    idle_before = set(await jkp.idle_ids())
    status, again = await create(jkp, env)
    assert status == 409
    assert f"Kernel already exists: {kernel_id}" in again["message"]
    assert idle_before <= set(await jkp.idle_ids())  # its claim, refused, took no kernel

    status, _ = await jkp.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    assert bound not in gateway.list_kernel_ids()
    status, _ = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 404
    assert (await jkp.store.counts())["handed"] == 0


async def test_create_without_id_is_known_by_the_pooled_kernels_id(stack):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    response = await jkp.fetch("POST", "/api/kernels", json.dumps({"env": USER_ENV}))
    assert response.code == 201
    model = json.loads(response.body)
    assert model["id"] in pooled
    # Served warm: the pop's steps, timed.
    assert list(server_timing(response)) == ["claim", "set_up", "hand_over", "total"]
    out = await run_in_kernel(jkp, model["id"], "print(6 * 7)")
    assert out.strip() == "42"


async def test_a_kernel_image_other_than_the_pools_is_started_cold_by_eg(stack):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    response = await jkp.fetch(
        "POST", "/api/kernels", json.dumps({"env": {**USER_ENV, "KERNEL_IMAGE": "another/i:1"}})
    )
    assert response.code == 201, response.body
    model = json.loads(response.body)
    assert model["id"] not in pooled
    assert "Server-Timing" not in response.headers  # EG's answer, as EG gave it
    assert set(await jkp.idle_ids()) == pooled  # the pool gave nothing
    assert model["id"] in gateway.list_kernel_ids()
    assert jkp.logged("Create started cold by EG: it sets KERNEL_IMAGE")


async def test_a_spec_without_a_pool_is_started_cold_by_eg(
    redis_server, gateway_factory, jkp_factory
):
    gateway = gateway_factory(more_kernel_names=("python_other",))
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=1")
    pooled = set(await jkp.wait_for_idle(1))
    status, model = await create(jkp, USER_ENV, name="python_other")
    assert status == 201, model
    assert model["name"] == "python_other"
    assert set(await jkp.idle_ids()) == pooled
    assert jkp.logged("Create started cold by EG: no pool serves kernel spec 'python_other'")


async def test_an_empty_pool_waits_briefly_then_starts_the_create_cold(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=0",
        "--KernelService.gateway_pool_wait=0.2",
    )
    kernel_id = str(uuid.uuid4())
    status, model = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id})
    assert status == 201, model
    assert model["id"] == kernel_id  # EG's own kernel, started with the client's id
    assert kernel_id in gateway.list_kernel_ids()
    assert jkp.logged("Create not served warm (PoolEmptyError)")


async def test_a_working_dir_outside_the_share_is_started_cold_by_eg(stack, tmp_path):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    outside = tmp_path / "elsewhere"
    status, model = await create(jkp, {**USER_ENV, "KERNEL_WORKING_DIR": str(outside)})
    assert status == 201, model
    assert model["id"] not in pooled
    assert set(await jkp.idle_ids()) == pooled


async def test_pop_sets_its_env_in_the_kernel(stack, shared_dir):
    jkp, gateway = stack
    body = {"userId": "zt", "env": {"KERNEL_FOO": "bar\nbaz"}}
    status, model = await jkp.request("POST", "/api/kernels/pop/", json.dumps(body))
    assert status == 200, model
    out = await run_in_kernel(
        gateway, model["id"], "import os; print(repr(os.environ['KERNEL_FOO']))"
    )
    assert out.strip() == repr("bar\nbaz")


@pytest.mark.parametrize(
    "env, why",
    [
        ({"FOO": "x"}, "neither KERNEL_* nor in client_envs"),
        ({"KERNEL_IMAGE": "another/image:1"}, "cannot change on a started kernel"),
        ({"KERNEL_FOO": 1}, "object of strings"),
        (["KERNEL_FOO"], "object of strings"),
    ],
)
async def test_pop_refuses_env_a_warm_kernel_cannot_take(stack, env, why):
    jkp, _ = stack
    body = {"userId": "zt", "env": env}
    status, error = await jkp.request("POST", "/api/kernels/pop/", json.dumps(body))
    assert status == 400
    assert error["reason"] == "Invalid env" and why in error["message"]
    assert len(await jkp.idle_ids()) == 2


async def test_any_replica_serves_a_kernel_another_created(stack, jkp_factory, redis_server):
    jkp, gateway = stack
    other = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=2")
    kernel_id = str(uuid.uuid4())
    status, _ = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id, "KERNEL_FOO": "bar"})
    assert status == 201

    status, model = await other.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 200 and model["id"] == kernel_id
    out = await run_in_kernel(other, kernel_id, "import os; print(os.environ['KERNEL_FOO'])")
    assert out.strip() == "bar"
    status, _ = await other.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    status, _ = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 404


async def test_with_redis_down_a_create_is_started_cold_by_eg(stack, redis_server):
    jkp, gateway = stack
    redis_server.stop()
    kernel_id = str(uuid.uuid4())
    status, model = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id})
    assert status == 201, model
    assert model["id"] == kernel_id and kernel_id in gateway.list_kernel_ids()
    status, model = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 200 and model["id"] == kernel_id


async def test_jkps_token_guards_the_gateway_api_and_egs_is_sent_upstream(
    redis_server, gateway_factory, jkp_factory
):
    gateway = gateway_factory(auth_token="eg-t0ken")
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=1",
        "--JKPManagerApp.auth_token=jkp-t0ken",
        "--GatewayClient.auth_token=eg-t0ken",
    )
    await jkp.wait_for_idle(1)
    body = json.dumps({"env": USER_ENV})
    status, error = await jkp.request("POST", "/api/kernels", body)
    assert status == 401 and error["reason"] == "Unauthorized"
    status, _ = await jkp.request(
        "POST", "/api/kernels", body, headers={"Authorization": "token eg-t0ken"}
    )
    assert status == 401

    token = {"Authorization": "token jkp-t0ken"}
    status, model = await jkp.request("POST", "/api/kernels", body, headers=token)
    assert status == 201, model
    status, specs = await jkp.request("GET", "/api/kernelspecs", headers=token)
    assert status == 200 and specs["default"] == "python_kubernetes"

    ws_url = jkp.url.replace("http", "ws", 1) + f"/api/kernels/{model['id']}/channels"
    with pytest.raises(Exception) as refused:
        await websocket_connect(ws_url)
    assert getattr(refused.value, "code", None) == 401
    conn = await websocket_connect(ws_url + "?token=jkp-t0ken")
    conn.close()


async def test_a_path_the_kernel_cannot_make_costs_no_kernel_and_pauses_nothing(stack):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    for _ in range(3):
        status, model = await create(jkp, USER_ENV, path="x" * 300)
        assert status == 201, model  # EG's cold kernel: EG does not make the directory
        assert model["id"] not in pooled
    assert set(await jkp.idle_ids()) == pooled
    assert jkp.logged("Create not served warm (UserDirectoryError)")
    status, _ = await jkp.pop("zt")
    assert status == 200


async def test_an_id_eg_has_from_a_cold_create_is_refused_and_its_warm_kernel_shut_down(stack):
    jkp, gateway = stack
    kernel_id = str(uuid.uuid4())
    status, _ = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id, "KERNEL_IMAGE": "other"})
    assert status == 201  # cold: EG's own kernel
    await jkp.wait_for_idle(2)
    pooled = set(await jkp.idle_ids())

    status, error = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id})

    assert status == 409 and f"Kernel already exists: {kernel_id}" in error["message"]
    # The pooled kernel bound beside the check is shut down, and the pool refills.
    await jkp.wait_for_idle(2)
    taken = pooled - set(await jkp.idle_ids())
    await wait_until(lambda: not taken & set(gateway.list_kernel_ids()), 10, "it shut down")
    assert (await jkp.store.counts())["handed"] == 0
    # Its binding went with it: jkp holds nothing under the id (EG's kernel keeps it).
    assert not await jkp.app.kernels.aliases.taken(kernel_id)


async def test_an_id_eg_has_in_a_create_no_pooled_kernel_serves_gets_eg_s_own_answer(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=1",
        "--PoolManager.refill_delay=60",  # the pool stays empty after the pop below
        "--KernelService.gateway_pool_wait=0.2",
    )
    await jkp.wait_for_idle(1)
    kernel_id = str(uuid.uuid4())
    status, _ = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id, "KERNEL_IMAGE": "other"})
    assert status == 201  # cold: EG's own kernel
    status, _ = await jkp.pop("zt")
    assert status == 200 and not await jkp.idle_ids()
    body = {"env": {**USER_ENV, "KERNEL_ID": kernel_id}}

    status, error = await create(jkp, body["env"])

    # Not served warm (no idle kernel), so not jkp's to refuse: EG answers as it does straight.
    eg_status, eg_error = await asyncio.to_thread(gateway.request, "POST", "/api/kernels", body)
    assert (status, error["message"]) == (eg_status, eg_error["message"])
    # EG 3.3 names the duplicate only in its traceback.
    assert status == 500 and f"Kernel already exists: {kernel_id}" in error["traceback"]
    assert (await jkp.store.counts())["handed"] == 1  # the pop's only
    assert not await jkp.app.kernels.aliases.taken(kernel_id)


@pytest.mark.parametrize(
    "body",
    [
        {"env": None},
        {"env": [], "name": "python_kubernetes"},
        {"name": ""},
        {"env": {**USER_ENV, "KERNEL_ID": str(uuid.uuid4()).upper()}},
        {"env": {**USER_ENV, "KERNEL_LONG": "x" * 4097}},
    ],
)
async def test_creates_eg_would_refuse_go_to_eg_as_they_came(stack, body):
    jkp, _ = stack
    pooled = set(await jkp.idle_ids())
    status, _ = await jkp.request("POST", "/api/kernels", json.dumps(body))
    assert status >= 400  # EG's own answer
    assert set(await jkp.idle_ids()) == pooled


async def test_a_create_whose_kernel_is_gone_from_eg_is_bound_to_the_next(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--PoolManager.max_pending_kernels=2",
        "--PoolManager.check_task_interval=3600",  # no check drops the gone one first
    )
    await jkp.wait_for_idle(2)
    *_, oldest = await jkp.idle_ids()  # the next claimed
    status, _ = await asyncio.to_thread(gateway.request, "DELETE", f"/api/kernels/{oldest}")
    assert status == 204
    kernel_id = str(uuid.uuid4())

    status, model = await create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id})

    # The create's claim reserved its id; the claim of the next kernel finds it its own.
    assert status == 201, model
    assert model["id"] == kernel_id
    assert jkp.logged(f"Kernel {oldest} is gone from EG; taking the next")
    status, got = await jkp.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 200 and got["id"] == kernel_id


async def test_a_cold_and_a_warm_create_of_one_id_at_once_make_one_kernel(stack):
    jkp, gateway = stack
    # KERNEL_CPUS is start-only: that create goes to EG as it came, beside the warm one.
    cold_env = {**USER_ENV, "KERNEL_CPUS": "2"}
    for _ in range(6):
        await jkp.wait_for_idle(2)
        kernel_id = str(uuid.uuid4())

        answers = await asyncio.gather(
            create(jkp, {**cold_env, "KERNEL_ID": kernel_id}),
            create(jkp, {**USER_ENV, "KERNEL_ID": kernel_id}),
        )

        statuses = sorted(status for status, _ in answers)
        assert statuses[0] == 201 and statuses[1] >= 400, answers
        refused = next(body for status, body in answers if status >= 400)
        assert f"Kernel already exists: {kernel_id}" in json.dumps(refused)
        assert gateway.list_kernel_ids().count(kernel_id) <= 1
        status, listed = await jkp.request("GET", "/api/kernels")
        assert status == 200 and [m["id"] for m in listed].count(kernel_id) == 1
        status, _ = await jkp.request("DELETE", f"/api/kernels/{kernel_id}")
        assert status == 204


async def test_a_replica_without_a_pool_exposes_none_of_its_kernels(
    redis_server, gateway_factory, jkp_factory, monkeypatch
):
    gateway = gateway_factory(more_kernel_names=("python_other",))
    pools = {"python_kubernetes": {"size": 1}, "python_other": {"size": 2}}
    monkeypatch.setenv("JKP_POOLS", json.dumps(pools))
    runs_both = await jkp_factory(redis_server, gateway)
    monkeypatch.setenv("JKP_POOLS", json.dumps({"python_kubernetes": {"size": 1}}))
    neighbour = await jkp_factory(redis_server, gateway)
    other = runs_both.app.pool_registry.pools["python_other"]
    await wait_until(lambda: _idle_is(other, 2), 60, "python_other's pool full")
    idle_id, *_ = [json.loads(m)["id"] for m in await other.store.idle_models()]
    on_eg = await asyncio.to_thread(gateway.request, "GET", f"/api/kernels/{idle_id}")
    # EG's answer for a kernel it does not have.
    unknown = str(uuid.uuid4())
    eg_404 = await asyncio.to_thread(gateway.request, "GET", f"/api/kernels/{unknown}")
    assert eg_404[0] == 404
    not_found = (404, {**eg_404[1], "message": eg_404[1]["message"].replace(unknown, idle_id)})

    status, listed = await neighbour.request("GET", "/api/kernels")
    assert status == 200 and idle_id not in {m["id"] for m in listed}
    assert await neighbour.request("GET", f"/api/kernels/{idle_id}") == not_found
    for action in ("interrupt", "restart"):
        path = f"/api/kernels/{idle_id}/{action}"
        assert await neighbour.request("POST", path, b"{}") == not_found
    assert await neighbour.request("DELETE", f"/api/kernels/{idle_id}") == not_found
    with pytest.raises(HTTPClientError) as refused:
        url = neighbour.url.replace("http", "ws", 1) + f"/api/kernels/{idle_id}/channels"
        await websocket_connect(url)
    assert refused.value.code == 404

    assert await asyncio.to_thread(gateway.request, "GET", f"/api/kernels/{idle_id}") == on_eg
    assert idle_id in [json.loads(m)["id"] for m in await other.store.idle_models()]
    # A kernel handed out by a pop is the caller's: it stays reachable by its own id.
    status, popped = await runs_both.request(
        "POST", "/api/kernels/pop/", json.dumps({"userId": "zt", "kernelName": "python_other"})
    )
    assert status == 200
    status, model = await neighbour.request("GET", f"/api/kernels/{popped['id']}")
    assert status == 200 and model["id"] == popped["id"]


async def _idle_is(pool, count):
    return (await pool.store.counts())["idle"] == count


async def test_a_working_dir_through_a_link_another_user_planted_binds_no_pooled_kernel(
    stack, shared_dir
):
    jkp, gateway = stack
    status, bob = await jkp.pop("bob")
    assert status == 200
    (shared_dir / "alice").mkdir()
    code = "import os; os.symlink(os.getcwd(), '../alice/project')"
    await run_in_kernel(gateway, bob["id"], code)
    pooled = set(await jkp.wait_for_idle(2))
    kernel_id = str(uuid.uuid4())
    workdir = shared_dir / "alice" / "project" / "notebooks"

    status, model = await create(
        jkp, {**USER_ENV, "KERNEL_ID": kernel_id, "KERNEL_WORKING_DIR": str(workdir)}
    )
    # Not served warm (no pooled kernel entered bob's directory): EG started its own.
    assert status == 201, model
    assert model["id"] == kernel_id
    assert set(await jkp.idle_ids()) == pooled
    assert jkp.logged("Create not served warm (UserDirectoryError)")
    cwd = await run_in_kernel(jkp, kernel_id, "import os; print(os.getcwd())")
    assert not cwd.startswith(str(shared_dir / "bob"))
    assert list((shared_dir / "bob").iterdir()) == []


async def test_a_path_no_kernel_can_take_costs_no_pooled_kernel(stack):
    jkp, gateway = stack
    pooled = set(await jkp.idle_ids())
    # A lone surrogate: valid JSON, but no kernel message can carry it.
    body = r'{"name": "python_kubernetes", "path": "\ud800", "env": {"KERNEL_USERNAME": "alice"}}'
    for _ in range(2):
        status, answer = await jkp.request("POST", "/api/kernels", body)
        assert status == 201, answer  # EG's own kernel, started cold
        assert answer["id"] not in pooled
    assert set(await jkp.idle_ids()) == pooled
    assert set(gateway.list_kernel_ids()) >= pooled


async def test_client_envs_star_lets_any_variable_reach_a_warm_kernel(
    redis_server, gateway, jkp_factory, monkeypatch
):
    # EG's client_envs of exactly ["*"] passes every variable of a create's env.
    monkeypatch.setenv("JKP_CLIENT_ENVS", "*")
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=2")
    pooled = await jkp.wait_for_idle(2)

    status, model = await create(jkp, {**USER_ENV, "FOO": "from the create"})
    assert status == 201, model
    assert model["id"] in pooled  # served warm
    body = {"userId": "zt", "env": {"BAR": "from the pop"}}
    status, popped = await jkp.request("POST", "/api/kernels/pop/", json.dumps(body))
    assert status == 200, popped

    code = "import os; print(os.environ.get('FOO'), os.environ.get('BAR'))"
    assert (await run_in_kernel(jkp, model["id"], code)).strip() == "from the create None"
    assert (await run_in_kernel(gateway, popped["id"], code)).strip() == "None from the pop"


_WORKING_DIR = "import os; print(os.getcwd()); print(os.environ['KERNEL_WORKING_DIR'])"


async def test_a_kernel_s_working_dir_variable_names_its_directory_after_a_pop_or_create(
    stack, shared_dir
):
    jkp, gateway = stack
    status, popped = await jkp.pop("zt")
    assert status == 200, popped
    out = await run_in_kernel(gateway, popped["id"], _WORKING_DIR)
    assert out.splitlines() == [str(shared_dir / "zt")] * 2

    # A directory relative to the share, as a client may name it.
    status, model = await create(jkp, {**USER_ENV, "KERNEL_WORKING_DIR": "alice/project"})
    assert status == 201, model
    out = await run_in_kernel(jkp, model["id"], _WORKING_DIR)
    assert out.splitlines() == [str(shared_dir / "alice" / "project")] * 2


async def test_a_create_without_a_directory_keeps_the_pools_working_dir_variable(stack, shared_dir):
    jkp, _ = stack
    status, model = await create(jkp, USER_ENV)
    assert status == 201, model
    out = await run_in_kernel(
        jkp, model["id"], "import os; print(os.environ['KERNEL_WORKING_DIR'])"
    )
    assert out.strip() == str(shared_dir)

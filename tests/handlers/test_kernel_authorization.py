"""Never looser than EG: a warm create is authorized as EG would authorize it.

jkp and EG run with the same authorization settings; every refusal is compared with EG's own
answer to the same request.
"""

import json

import pytest

from tests.conftest import run_in_kernel

EG_USERS = [
    "--EnterpriseGatewayApp.unauthorized_users=['root','mallory']",
    "--EnterpriseGatewayApp.authorized_users=['alice','bob','jovyan','mallory']",
]


@pytest.fixture
async def stack(redis_server, gateway_factory, jkp_factory, monkeypatch):
    gateway = gateway_factory(extra_args=EG_USERS)
    monkeypatch.setenv("JKP_UNAUTHORIZED_USERS", "root,mallory")
    monkeypatch.setenv("JKP_AUTHORIZED_USERS", "alice, bob,jovyan,mallory")
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=2")
    await jkp.wait_for_idle(2)
    return jkp, gateway


def create_body(user):
    return {"env": {"KERNEL_USERNAME": user}}


@pytest.mark.parametrize("user", ["root", "mallory", "carol"])
async def test_users_eg_refuses_get_eg_s_403_and_no_kernel(stack, user):
    jkp, gateway = stack
    pooled = await jkp.idle_ids()

    status, error = await jkp.request("POST", "/api/kernels", json.dumps(create_body(user)))
    eg_status, eg_error = gateway.request("POST", "/api/kernels", create_body(user))

    assert (status, eg_status) == (403, 403)
    assert error["message"] == eg_error["reason"]  # EG puts its text in the reason
    assert f"User '{user}' is not" in error["message"]
    assert await jkp.idle_ids() == pooled
    assert (await jkp.store.counts())["handed"] == 0


async def test_without_kernel_username_the_user_is_the_pools(
    redis_server, gateway_factory, jkp_factory, monkeypatch
):
    gateway = gateway_factory()
    monkeypatch.setenv("JKP_AUTHORIZED_USERS", "alice")
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=1")
    await jkp.wait_for_idle(1)
    status, error = await jkp.request("POST", "/api/kernels", "{}")
    assert status == 403
    assert "User 'jovyan' is not in the set of users authorized" in error["message"]


async def test_an_allowed_user_gets_a_warm_kernel(stack):
    jkp, _ = stack
    pooled = set(await jkp.idle_ids())
    status, model = await jkp.request("POST", "/api/kernels", json.dumps(create_body("alice")))
    assert status == 201, model
    assert model["id"] in pooled


async def test_with_impersonation_another_users_create_is_started_cold_by_eg(
    redis_server, gateway_factory, jkp_factory, monkeypatch
):
    gateway = gateway_factory(extra_args=["--EnterpriseGatewayApp.impersonation_enabled=True"])
    monkeypatch.setenv("JKP_IMPERSONATION_ENABLED", "true")
    jkp = await jkp_factory(redis_server, gateway, "--PoolManager.max_pending_kernels=1")
    pooled = set(await jkp.wait_for_idle(1))

    status, model = await jkp.request("POST", "/api/kernels", json.dumps(create_body("bob")))
    assert status == 201, model
    assert model["id"] not in pooled
    assert set(await jkp.idle_ids()) == pooled
    # EG started it for bob, and told the kernel impersonation is on.
    out = await run_in_kernel(
        jkp,
        model["id"],
        "import os; print(os.environ['KERNEL_USERNAME'], os.environ['EG_IMPERSONATION_ENABLED'])",
    )
    assert out.split() == ["bob", "True"]

    status, model = await jkp.request("POST", "/api/kernels", json.dumps(create_body("jovyan")))
    assert status == 201 and model["id"] in pooled  # the pool's own user is served warm


async def test_env_values_reach_a_warm_kernel_exactly_and_never_as_code(stack, shared_dir):
    """What a warm create binds late arrives as data: the kernel's os.environ holds each value
    as it was sent, and none of them runs."""
    jkp, _ = stack
    env = {
        "KERNEL_USERNAME": "alice",
        "KERNEL_QUOTES": "'\"'''\"\"\"",
        "KERNEL_BACKSLASHES": "\\n\\\\x00\\",
        "KERNEL_NEWLINES": "a\nb\r\nc",
        "KERNEL_UNICODE": "é€𝄞\u200b",
        "KERNEL_LONG": "y" * 4096,
        "KERNEL_CODE": "'); open('pwned', 'w').close(); ('",
        "KERNEL_MAGIC": "%cd /\n!touch pwned",
    }
    status, model = await jkp.request(
        "POST",
        "/api/kernels",
        json.dumps({"env": {**env, "KERNEL_WORKING_DIR": str(shared_dir / "alice")}}),
    )
    assert status == 201, model
    out = await run_in_kernel(
        jkp, model["id"], "import json, os; print(json.dumps(dict(os.environ)))"
    )
    seen = json.loads(out)
    assert {name: seen[name] for name in env} == env
    assert not list(shared_dir.rglob("pwned"))

"""jkp's own API: token authentication, body limits, methods and unknown paths, all JSON."""

import json

import pytest

from jkp.app import JKPManagerApp
from tests.conftest import _ListHandler

TOKEN = "jkp-t0ken-value"


@pytest.fixture
async def jkp_with_token(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", f"--JKPManagerApp.auth_token={TOKEN}"
    )
    await jkp.wait_for_idle(1)
    return jkp


def pop_body(user_id="zt"):
    return json.dumps({"userId": user_id})


@pytest.mark.parametrize(
    "authorization",
    [None, "", "token", "token wrong", f"token {TOKEN}x", f"Basic {TOKEN}", TOKEN],
)
async def test_pop_without_the_token_is_refused(jkp_with_token, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    status, body = await jkp_with_token.request(
        "POST", "/api/kernels/pop/", pop_body(), headers=headers
    )
    assert status == 401
    assert body["reason"] == "Unauthorized"
    assert TOKEN not in json.dumps(body)
    assert len(await jkp_with_token.idle_ids()) == 1


@pytest.mark.parametrize("scheme", ["token", "Bearer", "bearer"])
async def test_pop_with_the_token_is_served(jkp_with_token, scheme):
    status, model = await jkp_with_token.request(
        "POST", "/api/kernels/pop/", pop_body(), headers={"Authorization": f"{scheme} {TOKEN}"}
    )
    assert status == 200 and model["id"]


async def test_health_and_ready_are_open_pool_is_not(jkp_with_token):
    assert (await jkp_with_token.request("GET", "/api/health"))[0] == 200
    assert (await jkp_with_token.request("GET", "/api/ready"))[0] == 200
    assert (await jkp_with_token.request("GET", "/api/pool"))[0] == 401
    status, _ = await jkp_with_token.request(
        "GET", "/api/pool", headers={"Authorization": f"token {TOKEN}"}
    )
    assert status == 200


async def test_token_never_reaches_the_logs(redis_server, gateway, jkp_factory, caplog):
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=1",
        f"--JKPManagerApp.auth_token={TOKEN}",
        "--log-level=DEBUG",
    )
    await jkp.wait_for_idle(1)
    for authorization in (f"token {TOKEN}", f"token {TOKEN}-wrong", f"Bearer {TOKEN}"):
        await jkp.request(
            "POST",
            f"/api/kernels/pop/?token={TOKEN}",
            pop_body(),
            headers={"Authorization": authorization},
        )
    logged = "\n".join(r.getMessage() for r in jkp.log_records) + caplog.text
    assert "200 POST /api/kernels/pop/" in logged and "401 POST /api/kernels/pop/" in logged
    assert TOKEN not in logged


async def test_oversized_body_is_refused_with_413(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    body = json.dumps({"userId": "zt", "padding": "x" * (64 * 1024)})
    status, error = await jkp.request("POST", "/api/kernels/pop/", body)
    assert status == 413
    assert error["reason"] == "Request body too large"
    assert await jkp.idle_ids() == [pooled]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_on_pop_is_a_json_405(redis_server, gateway, jkp_factory, method):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=0")
    body = pop_body() if method in ("PUT", "PATCH") else None
    status, error = await jkp.request(method, "/api/kernels/pop/", body)
    assert status == 405
    assert set(error) == {"message", "reason"}


async def test_unknown_path_is_a_json_404(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=0")
    status, error = await jkp.request("GET", "/api/nothing-here")
    assert status == 404
    assert error["reason"] == "Not Found"


@pytest.mark.parametrize(
    "ip, token, warned",
    [
        ("127.0.0.1", "", False),
        ("::1", "", False),
        ("localhost", "", False),
        ("0.0.0.0", "", True),
        ("", "", True),
        ("10.1.2.3", "", True),
        ("0.0.0.0", "t", False),
    ],
)
def test_start_up_warns_when_exposed_without_token(ip, token, warned, caplog):
    app = JKPManagerApp()
    app.initialize([f"--ip={ip}", f"--JKPManagerApp.auth_token={token}"])
    records = []
    app.log.addHandler(_ListHandler(records))
    app.warn_if_exposed()
    assert any("WITHOUT authentication" in r.getMessage() for r in records) == warned


@pytest.mark.parametrize("size", [2 * 1024 * 1024, 64 * 1024 * 1024])
async def test_body_of_any_size_is_refused_with_a_json_413(
    redis_server, gateway, jkp_factory, size
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)
    body = json.dumps({"userId": "zt", "padding": "x" * size})
    status, error = await jkp.request("POST", "/api/kernels/pop/", body)
    assert status == 413
    assert error["reason"] == "Request body too large"
    assert await jkp.idle_ids() == [pooled]


async def test_chunked_body_over_the_limit_is_refused_with_a_json_413(
    redis_server, gateway, jkp_factory
):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    [pooled] = await jkp.wait_for_idle(1)

    async def chunks(write):
        await write(b'{"userId": "zt", "padding": "')
        for _ in range(40):
            await write(b"x" * 4096)
        await write(b'"}')

    status, error = await jkp.request("POST", "/api/kernels/pop/", body_producer=chunks)
    assert status == 413
    assert error["reason"] == "Request body too large"
    assert await jkp.idle_ids() == [pooled]

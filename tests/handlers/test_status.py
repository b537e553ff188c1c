"""GET /api/health, /api/ready and /api/pool against real Redis and EG, up and down."""

import time


async def test_health_answers_without_touching_redis_or_eg(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=0")
    redis_server.kill()
    gateway.kill()
    assert await jkp.request("GET", "/api/health") == (200, {"status": "ok"})


async def test_ready_when_redis_and_eg_answer(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=0")
    assert await jkp.request("GET", "/api/ready") == (200, {"status": "ready"})


async def test_not_ready_names_what_is_missing(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=0")
    redis_server.kill()
    started = time.monotonic()
    status, body = await jkp.request("GET", "/api/ready")
    assert time.monotonic() - started < 3
    assert status == 503 and body["reason"] == "Not ready"
    assert "redis" in body["message"] and "gateway" not in body["message"]
    redis_server.start()
    gateway.kill()
    status, body = await jkp.request("GET", "/api/ready")
    assert status == 503
    assert "gateway" in body["message"] and "redis:" not in body["message"]


async def test_pool_status_counts_kernels(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    assert (await jkp.pop("zt"))[0] == 200
    status, body = await jkp.request("GET", "/api/pool")
    assert status == 200
    assert body["target"] == 2 and body["handed"] == 1
    assert body["idle"] + body["starting"] == 2
    assert body["replica"] == jkp.pool.replica_id
    assert body["kernel_name"] == "python_kubernetes"

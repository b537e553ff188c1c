"""GET /api/health, /api/ready and /api/pool against real Redis and EG, up and down."""

import json
import logging
import time

from tests.conftest import wait_until


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
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.refill_delay=0"
    )
    await jkp.wait_for_idle(2)
    assert (await jkp.pop("zt"))[0] == 200
    status, body = await jkp.request("GET", "/api/pool")
    assert status == 200
    assert body["target"] == 2 and body["handed"] == 1
    assert body["idle"] + body["starting"] == 2
    assert body["replica"] == jkp.pool.replica_id
    assert body["kernel_name"] == "python_kubernetes"


def _metric(text, name, labels="", pool="python_kubernetes"):
    """The value of one sample of ``pool`` in Prometheus' text format (labels sorted)."""
    wanted = ",".join(sorted(filter(None, [labels, f'pool="{pool}"'])))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not in metrics")


async def test_metrics_count_pops_starts_and_pool_size(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=2", "--PoolManager.pop_timeout=0.5"
    )
    await jkp.wait_for_idle(2)
    assert (await jkp.pop("zt"))[0] == 200
    await jkp.wait_for_idle(2)
    await jkp.request("POST", "/api/kernels/pop/", '{"userId": "../x"}')  # 400: not a pop
    for user, code in (("zt", 200), ("other", 409)):  # the key is zt's: a conflict for other
        status, _ = await jkp.request(
            "POST", "/api/kernels/pop/", json.dumps({"userId": user}), {"Idempotency-Key": "k"}
        )
        assert status == code
    await jkp.wait_for_idle(2)
    redis_server.kill()
    assert (await jkp.pop("zt"))[0] == 503
    redis_server.start()

    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(jkp.url + "/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    assert _metric(text, "jkp_pops_total", 'outcome="served"') == 2
    assert _metric(text, "jkp_pops_total", 'outcome="conflict"') == 1
    assert _metric(text, "jkp_pops_total", 'outcome="error"') == 1
    assert _metric(text, "jkp_pop_duration_seconds_count", 'outcome="served"') == 2
    # Where the served pops' time went, step by step.
    for step in ("claim", "set_up", "hand_over", "response"):
        assert _metric(text, "jkp_pop_step_seconds_count", f'step="{step}"') == 2
    assert _metric(text, "jkp_kernel_starts_total", 'outcome="ready"') == 4
    assert _metric(text, "jkp_kernel_start_duration_seconds_count") == 4
    assert _metric(text, "jkp_dependency_errors_total", 'dependency="redis"') >= 1
    assert _metric(text, "jkp_target_kernels") == 2
    assert _metric(text, "jkp_idle_kernels") >= 0 and _metric(text, "jkp_starting_kernels") >= 0


async def test_metrics_report_the_pool_gauges(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=2")
    await jkp.wait_for_idle(2)
    from tornado.httpclient import AsyncHTTPClient

    text = (await AsyncHTTPClient().fetch(jkp.url + "/metrics")).body.decode()
    assert _metric(text, "jkp_idle_kernels") == 2
    assert _metric(text, "jkp_starting_kernels") == 0


async def test_metrics_need_the_token(redis_server, gateway, jkp_factory):
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=0", "--JKPManagerApp.auth_token=t0k"
    )
    assert (await jkp.request("GET", "/metrics"))[0] == 401


async def _start_failures_reach(jkp, count):
    error = (await jkp.request("GET", "/api/pool"))[1].get("start_error")
    return error is not None and error["failures"] >= count


async def test_a_pool_whose_starts_eg_refuses_says_why_and_the_replica_stays_ready(
    redis_server, gateway_factory, jkp_factory
):
    # EG counts every pooled and handed-out kernel as the pool's user (jovyan): once one is
    # handed out, EG refuses the refill.
    gateway = gateway_factory(extra_args=["--EnterpriseGatewayApp.max_kernels_per_user=1"])
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=1",
        "--PoolManager.refill_delay=0",
        "--PoolManager.max_start_backoff=0.2",
    )
    await jkp.wait_for_idle(1)
    assert (await jkp.pop("zt"))[0] == 200
    await wait_until(lambda: _start_failures_reach(jkp, 3), 20, "refused starts")

    status, pool = await jkp.request("GET", "/api/pool")
    assert status == 200 and pool["idle"] == 0
    assert pool["start_error"]["status"] == 403
    assert (
        "A max kernels per user limit has been set to 1 and user 'jovyan' currently has 1 "
        "active and pending kernel." in pool["start_error"]["message"]
    )
    # Every replica shares the pool and EG: readiness must not take them all out of service.
    assert await jkp.request("GET", "/api/ready") == (200, {"status": "ready"})
    # Logged once as an error, not once per attempt.
    errors = [r for r in jkp.log_records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(" ")[:2] for r in errors] == [["Starting", "kernel"]]

"""The server-spawning fixtures work (see conftest.py and dev/localstack.py)."""

import redis
from localstack import http_request


def test_redis_answers_after_restart_and_crash_on_same_port(redis_server):
    port = redis_server.port
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    client.close()

    redis_server.restart()
    assert redis_server.port == port
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    client.close()

    redis_server.kill()
    redis_server.start()
    assert redis_server.port == port
    client = redis.Redis(host="127.0.0.1", port=port)
    assert client.ping()
    client.close()


def test_gateway_starts_lists_and_deletes_a_kernel(gateway):
    status, body = http_request(
        "POST",
        gateway.url + "/api/kernels",
        {"name": "python_kubernetes", "env": {"KERNEL_USERNAME": "jovyan"}},
    )
    assert status == 201, body
    kernel_id = body["id"]
    assert kernel_id in gateway.list_kernel_ids()

    status, body = http_request("DELETE", f"{gateway.url}/api/kernels/{kernel_id}")
    assert status == 204, body
    assert kernel_id not in gateway.list_kernel_ids()

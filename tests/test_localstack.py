"""The server-spawning fixtures work (see conftest.py and dev/localstack.py)."""

import threading

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


def test_gateway_lists_its_kernels_while_others_are_being_added(gateway):
    # 8 listing at once while kernels start one after another, as the pool tests list EG's
    # kernels while a pool refills: EG fails some of those lists (KERNEL_BEING_ADDED).
    failed, stop = [], threading.Event()

    def list_again_and_again():
        while not stop.is_set():
            try:
                gateway.list_kernel_ids()
            except RuntimeError as e:
                failed.append(str(e))

    listers = [threading.Thread(target=list_again_and_again) for _ in range(8)]
    for lister in listers:
        lister.start()
    try:
        for _ in range(10):
            status, body = http_request(
                "POST", gateway.url + "/api/kernels", {"env": {"KERNEL_USERNAME": "jovyan"}}
            )
            assert status == 201, body
    finally:
        stop.set()
        for lister in listers:
            lister.join()
    assert failed == []
    assert len(gateway.list_kernel_ids()) == 10

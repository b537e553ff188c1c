"""GatewayClient against a real EG that requires a token, one that speaks TLS, and one whose
starts last until the kernel runs."""

import asyncio

import pytest
import trustme
from tornado import web
from tornado.httpclient import AsyncHTTPClient

from jkp.services.gateway import GatewayClient, GatewayError
from tests.conftest import localstack, run_in_kernel, wait_until


async def test_eg_token_is_sent_on_rest_and_websocket(redis_server, gateway_factory, jkp_factory):
    gateway = gateway_factory(auth_token="eg-s3cret")
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", "--GatewayClient.auth_token=eg-s3cret"
    )
    # Filling needs REST (start) and the websocket (kernel_info); the pop runs an execute.
    await jkp.wait_for_idle(1)
    status, model = await jkp.pop("zt")
    assert status == 200
    assert model["id"] in gateway.list_kernel_ids()


async def test_without_eg_token_jkp_is_not_ready_and_says_why(
    redis_server, gateway_factory, jkp_factory
):
    gateway = gateway_factory(auth_token="eg-s3cret")
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    status, body = await jkp.request("GET", "/api/ready")
    assert status == 503
    assert "gateway" in body["message"] and "401" in body["message"]
    assert "eg-s3cret" not in body["message"]
    assert gateway.list_kernel_ids() == []


def _tls_files(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return str(ca_file), str(cert_file), str(key_file)


async def test_https_eg_with_ca_bundle(redis_server, gateway_factory, jkp_factory, tmp_path):
    ca_file, cert_file, key_file = _tls_files(tmp_path)
    gateway = gateway_factory(certfile=cert_file, keyfile=key_file, cafile=ca_file)
    assert gateway.url.startswith("https://")
    jkp = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=1", f"--GatewayClient.ca_certs={ca_file}"
    )
    await jkp.wait_for_idle(1)  # REST over https, kernel_info over wss
    status, model = await jkp.pop("zt")
    assert status == 200
    assert (await run_in_kernel(gateway, model["id"], "print(1 + 1)", ca_file=ca_file)) == "2\n"


async def test_https_eg_with_unknown_ca_is_refused(
    redis_server, gateway_factory, jkp_factory, tmp_path
):
    ca_file, cert_file, key_file = _tls_files(tmp_path)
    gateway = gateway_factory(certfile=cert_file, keyfile=key_file, cafile=ca_file)
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=1")
    status, body = await jkp.request("GET", "/api/ready")
    assert status == 503 and "gateway" in body["message"]
    assert gateway.list_kernel_ids() == []


async def test_eg_requiring_a_client_certificate(
    redis_server, gateway_factory, jkp_factory, tmp_path
):
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("jkp@example.org")
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    client.cert_chain_pems[0].write_to_path(files["ccert"])
    client.private_key_pem.write_to_path(files["ckey"])
    gateway = gateway_factory(
        certfile=files["cert"],
        keyfile=files["key"],
        cafile=files["ca"],
        extra_args=[f"--EnterpriseGatewayApp.client_ca={files['ca']}"],
        client_cert=files["ccert"],
        client_key=files["ckey"],
    )
    without = await jkp_factory(
        redis_server, gateway, "--max-pending-kernels=0", f"--GatewayClient.ca_certs={files['ca']}"
    )
    assert (await without.request("GET", "/api/ready"))[0] == 503
    await without.stop()
    jkp = await jkp_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=1",
        f"--GatewayClient.ca_certs={files['ca']}",
        f"--GatewayClient.client_cert={files['ccert']}",
        f"--GatewayClient.client_key={files['ckey']}",
    )
    await jkp.wait_for_idle(1)
    status, model = await jkp.pop("zt")
    assert status == 200


class _PodStartingGateway:
    """A stand-in in front of a real EG that holds every start (POST /api/kernels) open until
    released, as EG on Kubernetes answers a start only once the pod runs; every other request
    goes to the real EG. Released starts are refused (503): no kernel is started."""

    def __init__(self, gateway):
        self.held = 0
        self.released = asyncio.Event()
        client = AsyncHTTPClient(force_instance=True)
        stand_in = self

        class Handler(web.RequestHandler):
            async def post(self):
                stand_in.held += 1
                await stand_in.released.wait()
                self.set_status(503)
                self.finish({"message": "released unstarted", "reason": "Unavailable"})

            async def get(self):
                response = await client.fetch(gateway.url + self.request.uri, raise_error=False)
                self.set_status(response.code)
                self.finish(response.body)

        self.client = client
        self.port = localstack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = web.Application([(r".*", Handler)]).listen(self.port, "127.0.0.1")

    def stop(self):
        self.released.set()
        self.server.stop()
        self.client.close()


async def test_starts_eg_holds_open_do_not_hold_up_other_requests(gateway):
    # More starts under way than tornado's shared client runs at once (10), as a burst asks.
    pods = _PodStartingGateway(gateway)
    client = GatewayClient(url=pods.url)
    starts = [
        asyncio.ensure_future(client.start_kernel("python3", {"KERNEL_USERNAME": "jkp"}))
        for _ in range(12)
    ]
    try:
        await wait_until(lambda: pods.held >= 10, 10, "10 starts held by the stand-in")
        # Another request to EG, sent while the starts wait for their pods, is answered...
        info = await asyncio.wait_for(client.ping(), 10)
        assert info["gateway_version"] and not any(s.done() for s in starts)
        # ...and every start reached EG, none queued behind the others.
        await wait_until(lambda: pods.held == 12, 10, "all 12 starts held by the stand-in")
    finally:
        pods.stop()
        await asyncio.gather(*starts, return_exceptions=True)
        client.close()


async def test_an_eg_that_refuses_its_kernel_list_is_a_403_for_jkp(gateway_factory):
    gateway = gateway_factory(list_kernels=False)
    client = GatewayClient(url=gateway.url)
    with pytest.raises(GatewayError) as refused:
        await client.list_kernels()
    assert refused.value.status == 403
    assert str(refused.value) == "EG GET /api/kernels: 403 Forbidden"

"""GatewayClient against a real EG that requires a token, and one that speaks TLS."""

import trustme

from tests.conftest import run_in_kernel


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

"""The published OpenAPI description, fuzzed by schemathesis against a live jkp on real Redis
and EG: no 5xx, every response (status, headers, body) conforms to it."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import wait_until

TOKEN = "contract-t0ken"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_spec_is_served_as_shipped_with_its_pools(
    redis_server, gateway_factory, jkp_factory, monkeypatch
):
    gateway = gateway_factory(more_kernel_names=("python_pandas",))
    monkeypatch.setenv("JKP_POOLS", '{"python_kubernetes": {"size": 0}, "python_pandas": {}}')
    jkp = await jkp_factory(redis_server, gateway, "--max-pending-kernels=0")
    response = await AsyncHTTPClient().fetch(jkp.url + "/api/spec.yaml")
    assert response.headers["Content-Type"].startswith("text/yaml")
    shipped = Path(__file__).resolve().parent.parent / "jkp" / "static" / "openapi.yaml"
    served, shipped = yaml.safe_load(response.body), yaml.safe_load(shipped.read_bytes())
    pop_request = served["components"]["schemas"]["PopRequest"]["properties"]
    assert pop_request["kernelName"]["enum"] == ["python_kubernetes", "python_pandas"]
    pop_request["kernelName"]["enum"] = ["python_kubernetes"]
    assert served == shipped


@pytest.mark.timeout(300)
async def test_api_conforms_to_its_openapi_description(
    redis_server, gateway, jkp_process_factory, tmp_path
):
    jkp = jkp_process_factory(
        redis_server,
        gateway,
        "--max-pending-kernels=8",
        f"--JKPManagerApp.auth_token={TOKEN}",
        "--PoolManager.pop_timeout=20",
    )
    await wait_until(lambda: _ready(jkp.url), 60, "jkp ready")
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{jkp.url}/api/spec.yaml",
            "--header",
            f"Authorization: token {TOKEN}",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "20261126",
            "--workers",
            "2",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


async def _ready(url):
    try:
        response = await AsyncHTTPClient().fetch(url + "/api/ready", raise_error=False)
    except OSError:  # not listening yet
        return False
    return response.code == 200

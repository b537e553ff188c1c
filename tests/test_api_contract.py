"""The published OpenAPI description, fuzzed by schemathesis against a live jkp on real Redis
and EG: no 5xx of jkp's own, every response (status, headers, body) conforms to it.

The run covers jkp's own API and EG's kernels API as jkp serves it. Creates that succeed start
kernels (warm from the pool, whose refill starts more, or cold on EG), so the create is given
fewer examples than the rest, which keeps the run to about a minute on 2 cores.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import wait_until

TOKEN = "contract-t0ken"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")

# A 5xx passes only when it is EG's own 500 passed through: EG 3.3 answers 500, with its
# traceback, to some creates it cannot handle (a kernel spec it does not have, a KERNEL_ID that
# is not a canonical v4 UUID, a body that is not a JSON object) and to the restart of a kernel it
# does not have. jkp's own errors never carry a traceback, and a healthy stack gives jkp no
# reason for a 5xx of its own.
HOOKS = """
import schemathesis


@schemathesis.check
def no_server_error_of_jkps_own(ctx, response, case):
    if response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 500 and isinstance(body, dict) and "traceback" in body:
        return None
    raise AssertionError(f"jkp answered {response.status_code}: {response.text[:2000]}")
"""

# Per operation. All checks run by default; naming them on the command line (--checks) would
# override what is set here.
CONFIG = """
hooks = "{hooks}"

# EG's create, served warm or passed through. Only 500s of EG's own (see HOOKS) are let through
# not_a_server_error. negative_data_rejection is off: EG accepts creates the description calls
# invalid (it drops env variables it does not pass, whatever their value), and so does a warm
# create where it is looser than EG (a KERNEL_* value over 4096 characters, "env": null).
[[operations]]
include-path = "/api/kernels"
include-method = "POST"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500"]
checks.negative_data_rejection.enabled = false
generation.max-examples = 10

# Requests naming a kernel: fuzzed ids are 404s, and only the stateful phase (after a create)
# names real kernels, on some runs more than others; no warning that test data is missing.
[[operations]]
include-path = "/api/kernels/{{kernel_id}}/restart"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500"]
warnings = false

[[operations]]
include-path-regex = '^/api/kernels/\\{{kernel_id\\}}(/interrupt)?$'
warnings = false

# A resource file EG has, passed through (random names would all be 404s).
[[operations]]
include-path = "/kernelspecs/{{kernel_name}}/{{resource}}"
parameters = {{ "path.kernel_name" = "python_kubernetes", "path.resource" = "kernel.json" }}

# A websocket: schemathesis cannot open one (tests/handlers/test_channels.py tests it), and its
# handler answers other methods with tornado's HTML 405, without Allow.
[[operations]]
include-path = "/api/kernels/{{kernel_id}}/channels"
enabled = false
"""


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
    hooks, config = tmp_path / "hooks.py", tmp_path / "schemathesis.toml"
    hooks.write_text(HOOKS)
    config.write_text(CONFIG.format(hooks=hooks))
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "run",
            f"{jkp.url}/api/spec.yaml",
            "--header",
            f"Authorization: token {TOKEN}",
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

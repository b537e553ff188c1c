"""Fixtures that spawn real servers (redis-server, Enterprise Gateway) on 127.0.0.1.

They come from dev/localstack.py. Nothing is skipped: when redis-server or
.venv-eg is missing the test fails and says to run scripts/bootstrap.

* ``redis_server``: a started RedisServer (fresh, in tmp_path), stopped after.
* ``redis_factory(**kwargs)``: more of them, e.g. ``redis_factory(appendonly=True)``.
* ``gateway``: a started EnterpriseGateway for this test only (the test may
  stop/kill/restart it), stopped after.
* ``gateway_factory(**kwargs)``: start gateways with other settings, e.g.
  ``gateway_factory(cull_idle_timeout=4, cull_interval=1)``; all stopped after.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "dev"))

import localstack  # noqa: E402

from localstack import EnterpriseGateway, RedisServer  # noqa: E402,F401


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH: run scripts/bootstrap", pytrace=False)


def _require_eg() -> None:
    exe = localstack.DEFAULT_EG_VENV / "bin" / "jupyter-enterprisegateway"
    if not exe.exists():
        pytest.fail(
            f"Enterprise Gateway venv missing ({exe}): run scripts/bootstrap", pytrace=False
        )


def _stop_all(servers) -> None:
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as e:  # keep stopping the others
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def redis_factory(tmp_path):
    _require_redis_server()
    started: list[RedisServer] = []

    def make(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", **kwargs)
        started.append(server)
        return server.start()

    yield make
    _stop_all(started)


@pytest.fixture
def redis_server(redis_factory) -> RedisServer:
    return redis_factory()


@pytest.fixture
def gateway_factory(tmp_path):
    _require_eg()
    started: list[EnterpriseGateway] = []

    def make(**kwargs) -> EnterpriseGateway:
        gw = EnterpriseGateway(tmp_path / f"eg{len(started)}", **kwargs)
        started.append(gw)
        return gw.start()

    yield make
    _stop_all(started)


@pytest.fixture
def gateway(gateway_factory) -> EnterpriseGateway:
    return gateway_factory()

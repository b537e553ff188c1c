"""Configuration: traits, their JKP_* environment defaults and precedence, start-up checks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jkp._version import __version__
from jkp.app import JKPManagerApp
from jkp.services.gateway import GatewayClient
from jkp.services.pool import PoolManager
from jkp.services.store import RedisStore
from jkp.traits import env_name

# The original Go service's variables and those jkp adds, each the default of one trait.
EXPECTED_ENV = {
    "JKP_EG_ENDPOINT": (GatewayClient, "url"),
    "JKP_MAX_PENDING_KERNELS": (PoolManager, "max_pending_kernels"),
    "JKP_NFS_VOLUME_SERVER": (PoolManager, "nfs_volume_server"),
    "JKP_NFS_MOUNT_PATH": (PoolManager, "nfs_mount_path"),
    "JKP_WORKING_DIR": (PoolManager, "working_dir"),
    "JKP_KERNEL_IMAGE": (PoolManager, "kernel_image"),
    "JKP_KERNEL_NAMESPACE": (PoolManager, "kernel_namespace"),
    "JKP_SERVER_PORT": (JKPManagerApp, "port"),
    "JKP_ACTIVATION_INTERVAL": (PoolManager, "activation_interval"),
    "JKP_REDIS_HOST": (RedisStore, "redis_host"),
    "JKP_REDIS_PORT": (RedisStore, "redis_port"),
    "JKP_REDIS_DB": (RedisStore, "redis_db"),
    "JKP_REDIS_KEY": (RedisStore, "key"),
    "JKP_REDIS_URL": (RedisStore, "redis_url"),
    "JKP_CHECK_TASK_INTERVAL": (PoolManager, "check_task_interval"),
    "JKP_KERNEL_NAME": (PoolManager, "kernel_name"),
    "JKP_KERNEL_USER_NAME": (PoolManager, "kernel_user_name"),
    "JKP_POP_TIMEOUT": (PoolManager, "pop_timeout"),
}

DEFAULTS = {
    "JKP_EG_ENDPOINT": "http://127.0.0.1:8888",
    "JKP_MAX_PENDING_KERNELS": 10,
    "JKP_NFS_VOLUME_SERVER": "10.0.0.29",
    "JKP_NFS_MOUNT_PATH": "/data/tablegpt-test/shared/",
    "JKP_WORKING_DIR": "/mnt/shared/",
    "JKP_KERNEL_IMAGE": "elyra/kernel-py:3.2.2",
    "JKP_KERNEL_NAMESPACE": "tablegpt-kernels",
    "JKP_SERVER_PORT": 8080,
    "JKP_ACTIVATION_INTERVAL": 1200,
    "JKP_REDIS_HOST": "127.0.0.1",
    "JKP_REDIS_PORT": 6379,
    "JKP_REDIS_DB": 0,
    "JKP_REDIS_KEY": "tablegpt-test:kernels:idle",
    "JKP_REDIS_URL": "",
    "JKP_CHECK_TASK_INTERVAL": 120,
    "JKP_KERNEL_NAME": "python_kubernetes",
    "JKP_KERNEL_USER_NAME": "jovyan",
    "JKP_POP_TIMEOUT": 10,
}


@pytest.fixture(autouse=True)
def in_tmp_dir(monkeypatch, tmp_path):
    """No jkpmanager_config.py of the working directory may be loaded (conftest isolates the
    environment and ~/.jupyter)."""
    monkeypatch.chdir(tmp_path)


def make_app(argv=()):
    app = JKPManagerApp()
    app.initialize(list(argv))
    return app


def configured(app, cls):
    return {
        GatewayClient: app.gateway,
        PoolManager: app.pool_manager,
        RedisStore: app.store,
        JKPManagerApp: app,
    }[cls]


def test_defaults_are_the_original_services():
    app = make_app()
    for env, (cls, trait) in EXPECTED_ENV.items():
        assert getattr(configured(app, cls), trait) == DEFAULTS[env], env


def test_every_variable_sets_its_trait(monkeypatch):
    values = {
        "JKP_EG_ENDPOINT": "https://eg.example:8443",
        "JKP_MAX_PENDING_KERNELS": "5",
        "JKP_NFS_VOLUME_SERVER": "",
        "JKP_NFS_MOUNT_PATH": "/export/x",
        "JKP_WORKING_DIR": "/work",
        "JKP_KERNEL_IMAGE": "my/kernel:1",
        "JKP_KERNEL_NAMESPACE": "ns",
        "JKP_SERVER_PORT": "9090",
        "JKP_ACTIVATION_INTERVAL": "60",
        "JKP_REDIS_HOST": "::1",
        "JKP_REDIS_PORT": "6380",
        "JKP_REDIS_DB": "2",
        "JKP_REDIS_KEY": "k:idle",
        "JKP_REDIS_URL": "redis://127.0.0.1:6390/1",
        "JKP_CHECK_TASK_INTERVAL": "30",
        "JKP_KERNEL_NAME": "python3",
        "JKP_KERNEL_USER_NAME": "alice",
        "JKP_POP_TIMEOUT": "2.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    app = make_app()
    for env, (cls, trait) in EXPECTED_ENV.items():
        got = getattr(configured(app, cls), trait)
        assert str(got) == values[env] or got == type(got)(values[env]), env


def test_every_env_name_is_declared_once_and_named_in_help():
    seen = {}
    for cls in (JKPManagerApp, GatewayClient, RedisStore, PoolManager):
        for name, trait in cls.class_own_traits(config=True).items():
            env = env_name(trait)
            if env is not None:
                assert env not in seen, f"{env} declared twice"
                seen[env] = (cls, name)
                assert f"({env} env var)" in trait.help
    assert set(EXPECTED_ENV) <= set(seen)
    for env, owner in EXPECTED_ENV.items():
        assert seen[env] == owner


def test_command_line_beats_config_file_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JKP_MAX_PENDING_KERNELS", "5")
    monkeypatch.setenv("JKP_KERNEL_IMAGE", "from/env")
    config = tmp_path / "jkp_config.py"
    config.write_text(
        "c.PoolManager.max_pending_kernels = 7\nc.PoolManager.kernel_image = 'from/config'\n"
    )
    app = make_app([f"--config={config}", "--PoolManager.max_pending_kernels=9"])
    assert app.pool_manager.max_pending_kernels == 9
    assert app.pool_manager.kernel_image == "from/config"
    app = make_app([f"--config={config}"])
    assert app.pool_manager.max_pending_kernels == 7
    app = make_app(["--max-pending-kernels=3", "--port=8081", "--ip=::1"])
    assert (app.pool_manager.max_pending_kernels, app.port, app.ip) == (3, 8081, "::1")


@pytest.mark.parametrize(
    "env_name, value",
    [
        ("JKP_MAX_PENDING_KERNELS", "abc"),
        ("JKP_REDIS_PORT", "http"),
        ("JKP_ACTIVATION_INTERVAL", "soon"),
        ("JKP_EG_ENDPOINT", "ftp://eg"),
        ("JKP_MAX_PENDING_KERNELS", "-1"),
    ],
)
def test_bad_value_stops_start_up_naming_the_variable(env_name, value, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "JUPYTER_CONFIG_DIR": str(tmp_path), env_name: value}
    result = subprocess.run(
        [sys.executable, "-m", "jkp"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"Bad configuration: {env_name}" in result.stderr or f"from {env_name}=" in result.stderr
    assert "Traceback" not in result.stderr


def test_kernel_start_request_env_with_nfs_volume():
    pool = make_app(["--PoolManager.working_dir=/mnt/shared/"]).pool_manager
    env = pool.kernel_start_env("6f1f7a2e-8a1b-4c1d-9e2f-0a1b2c3d4e5f")
    assert env["KERNEL_ID"] == "6f1f7a2e-8a1b-4c1d-9e2f-0a1b2c3d4e5f"
    assert env["KERNEL_USERNAME"] == "jovyan"
    assert env["KERNEL_NAMESPACE"] == "tablegpt-kernels"
    assert env["KERNEL_IMAGE"] == "elyra/kernel-py:3.2.2"
    assert env["KERNEL_WORKING_DIR"] == "/mnt/shared/"
    assert json.loads(env["KERNEL_VOLUMES"]) == [
        {
            "name": "shared-vol",
            "nfs": {"server": "10.0.0.29", "path": "/data/tablegpt-test/shared/"},
        }
    ]
    assert json.loads(env["KERNEL_VOLUME_MOUNTS"]) == [
        {"name": "shared-vol", "mountPath": "/mnt/shared/"}
    ]


def test_kernel_start_request_env_without_nfs_has_no_volumes(monkeypatch):
    monkeypatch.setenv("JKP_NFS_VOLUME_SERVER", "")
    env = make_app().pool_manager.kernel_start_env("6f1f7a2e-8a1b-4c1d-9e2f-0a1b2c3d4e5f")
    assert "KERNEL_VOLUMES" not in env and "KERNEL_VOLUME_MOUNTS" not in env


@pytest.mark.parametrize(
    "url, ws_url",
    [
        ("http://127.0.0.1:8888", "ws://127.0.0.1:8888"),
        ("https://eg:8443/", "wss://eg:8443"),
        ("http://eg/base", "ws://eg/base"),
    ],
)
def test_websocket_scheme_follows_eg_endpoint(url, ws_url):
    gateway = make_app([f"--eg-endpoint={url}"]).gateway
    assert gateway.ws_url == ws_url


def test_redis_url_overrides_host_port_db(monkeypatch):
    monkeypatch.setenv("JKP_REDIS_HOST", "10.1.1.1")
    monkeypatch.setenv("JKP_REDIS_URL", "redis://:s3cret@127.0.0.1:6390/3")
    kwargs = make_app().store.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "127.0.0.1",
        6390,
        3,
        "s3cret",
    )


def test_example_config_file_loads():
    example = Path(__file__).resolve().parent.parent / "jkp_config.py"
    app = make_app([f"--config={example}"])
    assert app.gateway.url == "http://enterprise-gateway.enterprise-gateway:8888"
    assert app.store.redis_host == "redis"
    assert app.pool_manager.max_pending_kernels == 10


@pytest.mark.parametrize(
    "env_name, value, kernel_var",
    [
        ("JKP_KERNEL_IMAGE", "img:$(id)", "KERNEL_IMAGE"),
        ("JKP_KERNEL_NAMESPACE", "ns`id`", "KERNEL_NAMESPACE"),
        ("JKP_WORKING_DIR", "/mnt/a\nb", "KERNEL_WORKING_DIR"),
        ("JKP_NFS_MOUNT_PATH", "/" + "x" * 4100, "KERNEL_VOLUMES"),
    ],
)
def test_kernel_values_eg_would_refuse_stop_start_up(env_name, value, kernel_var, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "JUPYTER_CONFIG_DIR": str(tmp_path), env_name: value}
    result = subprocess.run(
        [sys.executable, "-m", "jkp"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"Bad configuration: {kernel_var} " in result.stderr
    assert "Traceback" not in result.stderr


def test_json_log_lines(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "JUPYTER_CONFIG_DIR": str(tmp_path),
        "JKP_LOG_JSON": "true",
        "JKP_MAX_PENDING_KERNELS": "abc",
    }
    result = subprocess.run(
        [sys.executable, "-m", "jkp"], env=env, capture_output=True, text=True, timeout=60
    )
    # Bad configuration is found before logging is switched to JSON; a good one logs JSON.
    assert result.returncode == 1
    env["JKP_MAX_PENDING_KERNELS"] = "0"
    env["JKP_SERVER_PORT"] = "0"
    env["JKP_REDIS_PORT"] = "1"
    env["JKP_EG_ENDPOINT"] = "http://127.0.0.1:1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jkp"], env=env, stderr=subprocess.PIPE, text=True
    )
    first = json.loads(proc.stderr.readline())
    proc.terminate()
    proc.wait(timeout=15)
    assert first["level"] == "INFO" and first["logger"] == "JKPManagerApp"
    assert "listening on" in first["message"] and first["time"].endswith("+00:00")


def test_generate_config_writes_every_option(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "JUPYTER_CONFIG_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "jkp", "--generate-config", "-y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "jkpmanager_config.py").read_text()
    for cls in (JKPManagerApp, GatewayClient, RedisStore, PoolManager):
        for name in cls.class_own_traits(config=True):
            assert f"c.{cls.__name__}.{name} = " in written, f"{cls.__name__}.{name}"
    assert "# c.PoolManager.max_pending_kernels = 10" in written


def test_version():
    result = subprocess.run(
        [sys.executable, "-m", "jkp", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == __version__


@pytest.mark.parametrize(
    "value, users",
    [("", []), ("alice", ["alice"]), ("alice, bob,,carol ", ["alice", "bob", "carol"])],
)
def test_user_lists_read_from_the_environment_as_eg_reads_its_own(monkeypatch, value, users):
    monkeypatch.setenv("JKP_AUTHORIZED_USERS", value)
    assert make_app().kernels.authorized_users == users
    assert make_app().kernels.unauthorized_users == ["root"]

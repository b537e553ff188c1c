"""Local stack for jkp: a throw-away Redis, a Jupyter Enterprise Gateway and, with
``--lab``, a JupyterLab pointed at jkp.

Importable (the test fixtures in tests/conftest.py use it) and runnable::

    python dev/localstack.py [--lab] [jkpmanager args, e.g. --port=8081]

Everything binds to 127.0.0.1 only.  Stdlib only, no jkp imports.  The parts live beside
it: stack_processes.py (the child-process plumbing), stack_redis.py (Redis, sentinels),
stack_jupyter.py (Enterprise Gateway, JupyterLab); this module re-exports them.

Environment read by ``main()``:

* ``JKP_STACK_REDIS_PORT`` (default 6380, never a user's Redis on 6379)
* ``JKP_STACK_EG_PORT`` (default 8888)
* ``JKP_STACK_LAB_PORT`` (default 8889), with ``--lab``: JupyterLab in gateway mode at
  jkp, as user ``alice``, its root her directory in the share (``.stack/shared/alice``), so
  each notebook gets a warm kernel there; its URL (with a fresh token) is printed.
* ``JKP_STACK_NO_JKP=1``: only run Redis and EG (e.g. to run jkpmanager
  yourself under a debugger), until Ctrl-C.
* any ``JKP_*`` setting for jkpmanager overrides the defaults set here.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import subprocess
import sys
import time

from stack_jupyter import DEFAULT_EG_VENV, DEFAULT_LAB_VENV, EnterpriseGateway, JupyterLab
from stack_processes import BOOTSTRAP_HINT, HOST, REPO, _stop_group, free_port, http_request
from stack_redis import RedisSentinel, RedisSentinelSet, RedisServer

__all__ = [
    "BOOTSTRAP_HINT",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "DEFAULT_EG_VENV",
    "DEFAULT_LAB_VENV",
    "HOST",
    "REPO",
    "EnterpriseGateway",
    "JupyterLab",
    "RedisSentinel",
    "RedisSentinelSet",
    "RedisServer",
    "free_port",
    "http_request",
    "main",
]

# Debian's package (scripts/bootstrap installs it): Playwright's own browser download is
# blocked here, so Playwright drives this one.
CHROMIUM = "/usr/bin/chromium"
# Headless Chromium that opens no connection of its own: on a closed network its background
# requests (updates, sync, field trials) are refused and get in the way.
CHROMIUM_ARGS = [
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


# --------------------------------------------------------------------------
# `python dev/localstack.py`


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, frame):
    raise _Stop(signum)


def _jkp_port(argv: list[str], env: dict[str, str]) -> str:
    port = env.get("JKP_SERVER_PORT") or "8080"
    for i, a in enumerate(argv):
        if a.startswith("--port="):
            port = a.split("=", 1)[1]
        elif a == "--port" and i + 1 < len(argv):
            port = argv[i + 1]
    return port


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``url`` answers 200 while ``proc`` runs; raise RuntimeError otherwise."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if http_request("GET", url, timeout=1.0)[0] == 200:
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    why = f"exited with code {proc.returncode}" if proc.poll() is not None else "not ready"
    raise RuntimeError(f"jkpmanager {why} ({url})")


def main(argv: list[str] | None = None) -> int:
    """Run Redis + EG + jkpmanager (+ JupyterLab with ``--lab``) in the foreground;
    Ctrl-C/SIGTERM stops all."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with_lab = "--lab" in argv
    argv = [a for a in argv if a != "--lab"]
    no_jkp = os.environ.get("JKP_STACK_NO_JKP", "") not in ("", "0")
    jkp_bin = REPO / ".venv" / "bin" / "jkpmanager"
    if not no_jkp and not jkp_bin.exists():
        print(f"localstack: {jkp_bin} not found: {BOOTSTRAP_HINT}", file=sys.stderr)
        return 1

    state = REPO / ".stack"
    shared = state / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(state / "redis", port=int(os.environ.get("JKP_STACK_REDIS_PORT", "6380")))
    eg = EnterpriseGateway(state / "eg", port=int(os.environ.get("JKP_STACK_EG_PORT", "8888")))
    redis.port_env_hint = "JKP_STACK_REDIS_PORT"
    eg.port_env_hint = "JKP_STACK_EG_PORT"

    jkp_env = dict(os.environ)
    defaults = {
        "JKP_SERVER_IP": HOST,
        "JKP_EG_ENDPOINT": eg.url,
        "JKP_REDIS_HOST": HOST,
        "JKP_REDIS_PORT": str(redis.port),
        "JKP_WORKING_DIR": str(shared),
        "JKP_NFS_VOLUME_SERVER": "",  # no NFS volume on a laptop
        "JKP_MAX_PENDING_KERNELS": "3",
    }
    for key, value in defaults.items():
        jkp_env.setdefault(key, value)

    lab = None
    if with_lab:
        lab = JupyterLab(
            state / "lab",
            gateway_url=f"http://{HOST}:{_jkp_port(argv, jkp_env)}",
            root_dir=shared / "alice",
            port=int(os.environ.get("JKP_STACK_LAB_PORT", "8889")),
            token=secrets.token_hex(16),
            gateway_token=jkp_env.get("JKP_AUTH_TOKEN", ""),
        )
        lab.port_env_hint = "JKP_STACK_LAB_PORT"
        lab.root_dir.mkdir(exist_ok=True)

    old_handlers = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    jkp: subprocess.Popen | None = None
    code = 0
    try:
        try:
            redis.start()
            print(f"localstack: Redis  {redis.url}  (log {redis.log_path})", flush=True)
            eg.start()
            print(f"localstack: EG     {eg.url}  (log {eg.log_path})", flush=True)
            if no_jkp:
                print("localstack: JKP_STACK_NO_JKP set; jkp env would be:", flush=True)
                for key in defaults:
                    print(f"  {key}={jkp_env[key]}", flush=True)
                print("localstack: Ctrl-C to stop", flush=True)
                while True:
                    time.sleep(3600)
            port = _jkp_port(argv, jkp_env)
            print(
                f"localstack: jkp    http://localhost:{port}  ({' '.join([jkp_bin.name, *argv])})"
            )
            for key in defaults:
                print(f"  {key}={jkp_env[key]}")
            print(
                f"localstack: try   curl -X POST localhost:{port}/api/kernels/pop/ "
                "-H 'Content-Type: application/json' -d '{\"userId\":\"zt\"}'"
            )
            jkp = subprocess.Popen(
                [str(jkp_bin), *argv], cwd=REPO, env=jkp_env, start_new_session=True
            )
            if lab is not None:
                _wait_ready(f"http://{HOST}:{port}/api/ready", jkp, 60.0)
                lab.start()
                print(
                    f"localstack: Lab    {lab.lab_url}\n"
                    f"  as {lab.username}, notebooks in {lab.root_dir}: each gets a warm kernel"
                    f" there  (log {lab.log_path})",
                    flush=True,
                )
            print("localstack: Ctrl-C to stop", flush=True)
            code = jkp.wait()
            print(f"localstack: jkpmanager exited with code {code}", file=sys.stderr, flush=True)
        except _Stop as stop:
            print(f"\nlocalstack: {signal.Signals(stop.signum).name}, stopping...", flush=True)
        except RuntimeError as e:
            print(f"localstack: {e}", file=sys.stderr, flush=True)
            code = 1
    finally:
        # No interruptions while cleaning up: every step has its own timeout.
        for s in old_handlers:
            signal.signal(s, signal.SIG_IGN)
        if lab is not None:
            lab.stop()  # first: it shuts its kernels down through jkp
        if jkp is not None:
            _stop_group(jkp, 15.0)
        eg.stop()
        redis.stop()
        print("localstack: stopped", flush=True)
        for s, h in old_handlers.items():
            signal.signal(s, h)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Local stack for jkp: a throw-away Redis, a Jupyter Enterprise Gateway and, with
``--lab``, a JupyterLab pointed at jkp.

Importable (the test fixtures in tests/conftest.py use it) and runnable::

    python dev/localstack.py [--lab] [jkpmanager args, e.g. --port=8081]

Everything binds to 127.0.0.1 only.  Stdlib only, no jkp imports.

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

import errno
import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EG_VENV = REPO / ".venv-eg"
DEFAULT_LAB_VENV = REPO / ".venv-lab"
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
HOST = "127.0.0.1"

BOOTSTRAP_HINT = "run scripts/bootstrap"

# urllib honours http_proxy & co. by default; local traffic must never go
# through a proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _check_port_free(port: int, what: str, env_hint: str | None = None) -> None:
    """Fail clearly when something already listens on 127.0.0.1:port.

    Without this, a readiness probe could be answered by somebody else's
    server (a user's Redis or Jupyter) while ours fails to bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the servers use, so TIME_WAIT leftovers from a previous
        # run on this port do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            hint = f" (choose another with {env_hint})" if env_hint else ""
            raise RuntimeError(f"{what}: port {HOST}:{port} is already in use{hint}") from None


def http_request(
    method: str, url: str, body=None, timeout: float = 10.0, headers=None, ssl_context=None
):
    """Tiny JSON-over-HTTP helper: returns (status, parsed JSON body or None)."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = _opener
    if ssl_context is not None:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context)
        )
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, parsed


# --------------------------------------------------------------------------
# process helpers


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group led by proc (started with start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(proc: subprocess.Popen | None, timeout: float) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # SIGKILL the group even when the leader is gone: children may linger.
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _pids_with_arg(needle: str) -> list[int]:
    """PIDs of processes whose command line contains needle."""
    me = os.getpid()
    found = []
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline.replace("\0", " "):
                found.append(int(entry.name))
        return found
    # No /proc (macOS): fall back to ps.
    try:
        out = subprocess.run(
            ["ps", "-Ao", "pid=,command="], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return found
    for line in out.splitlines():
        pid, _, cmd = line.strip().partition(" ")
        if pid.isdigit() and int(pid) != me and needle in cmd:
            found.append(int(pid))
    return found


def _kill_pid_and_group(pid: int) -> None:
    try:
        if os.getpgid(pid) == pid:  # kernels lead their own session/group
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_log_from(path: Path, offset: int, max_lines: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-max_lines:]) or "(empty log)"


class _Server:
    """Common start/stop/kill/restart plumbing for a child server."""

    name = "server"
    log_name = "server.log"
    stop_timeout = 10.0
    port_env_hint: str | None = None  # named in the "port in use" error

    def __init__(self, workdir, port: int | None):
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / self.log_name
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0

    # subclasses provide these
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _start_timeout(self) -> float:
        raise NotImplementedError

    def _cleanup_leftovers(self) -> None:
        pass

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self):
        if self.is_running():
            raise RuntimeError(f"{self.name} already running (pid {self._proc.pid})")
        _check_port_free(self.port, self.name, self.port_env_hint)
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group; not hit by the terminal's Ctrl-C
            )
        deadline = time.monotonic() + self._start_timeout()
        while True:
            if self._proc.poll() is not None:
                why = f"exited with code {self._proc.returncode}"
                break
            if self._is_ready():
                if self._proc.poll() is None:
                    return self
                why = f"exited with code {self._proc.returncode}"
                break
            if time.monotonic() > deadline:
                why = f"not ready after {self._start_timeout():.0f} s"
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"{self.name} on {HOST}:{self.port} failed to start ({why}).\n"
            f"command: {' '.join(cmd)}\n"
            f"--- log {self.log_path} ---\n{_read_log_from(self.log_path, self._log_offset)}"
        )

    def stop(self) -> None:
        """SIGTERM the process group, wait, SIGKILL as a fallback."""
        if self._proc is not None:
            _signal_group(self._proc, signal.SIGCONT)  # a paused one would not hear SIGTERM
        _stop_group(self._proc, self.stop_timeout)
        self._cleanup_leftovers()

    def pause(self) -> None:
        """SIGSTOP the process group: it stays alive but answers nothing (a hung server)."""
        _signal_group(self._proc, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the process group after pause()."""
        _signal_group(self._proc, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process group at once (simulates a crash)."""
        if self._proc is not None:
            _signal_group(self._proc, signal.SIGKILL)
            self._proc.wait()
        self._cleanup_leftovers()

    def restart(self):
        self.stop()
        return self.start()

    def log_tail(self, max_lines: int = 60) -> str:
        return _read_log_from(self.log_path, self._log_offset, max_lines)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------
# Redis


def _resp(*args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    return payload


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:n]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


def _redis_command(port: int, *args: str, timeout: float = 1.0, password: str = ""):
    """Send one command over RESP (after AUTH with ``password``); return the reply
    (str/int/bytes/list) or raise."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall((_resp("AUTH", password) if password else b"") + _resp(*args))
        f = s.makefile("rb")
        if password:
            _read_reply(f)
        return _read_reply(f)


class RedisServer(_Server):
    """A redis-server on 127.0.0.1 in its own workdir; same port across restarts."""

    name = "redis-server"
    log_name = "redis.log"

    def __init__(
        self,
        workdir,
        port: int | None = None,
        appendonly: bool = False,
        password: str = "",
        replica_of: int | None = None,
    ):
        super().__init__(workdir, port)
        self.appendonly = appendonly
        self.password = password
        self.replica_of = replica_of  # the port of its master on 127.0.0.1

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def command(self, *args: str, timeout: float = 1.0):
        """The reply of this server to one command (e.g. ``CLIENT KILL TYPE replica``)."""
        return _redis_command(self.port, *args, timeout=timeout, password=self.password)

    def role(self) -> str:
        """``master`` or ``slave`` (a replica), as the server says now."""
        return self.command("ROLE")[0].decode()

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server not found on PATH: {BOOTSTRAP_HINT}")
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--logfile",
            "",  # stdout, which goes to our log file
            *self._replication_args(),
        ]

    def _replication_args(self) -> list[str]:
        args = []
        if self.password:
            # masterauth too: a failover may make a master the replica of another.
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of:
            args += ["--replicaof", HOST, str(self.replica_of)]
        return args

    def _is_ready(self) -> bool:
        try:
            if self.command("PING") != "PONG":
                return False
            # Make sure it is *our* process answering.
            info = self.command("INFO", "server") or b""
        except (OSError, RuntimeError):
            return False
        for line in info.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1]) == self._proc.pid
        return False

    def _start_timeout(self) -> float:
        return 10.0


class RedisSentinel(RedisServer):
    """One Redis Sentinel (Debian's redis-server in sentinel mode) watching the master at
    ``master_port`` under ``master_name``; its config file is its own, as sentinels rewrite it.

    Quick failovers for tests: the master is down after 1 s without an answer, and a failover
    that stalls is tried again after 5 s."""

    name = "redis-sentinel"
    log_name = "sentinel.log"

    def __init__(
        self,
        workdir,
        master_port: int,
        master_name: str = "jkp",
        port: int | None = None,
        master_password: str = "",
        password: str = "",
    ):
        super().__init__(workdir, port, password=password)
        self.master_port = master_port
        self.master_name = master_name
        self.master_password = master_password
        self.conf_path = self.workdir / "sentinel.conf"

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server not found on PATH: {BOOTSTRAP_HINT}")
        if not self.conf_path.exists():
            lines = [
                f"port {self.port}",
                f"bind {HOST}",
                "daemonize no",
                'logfile ""',
                f"dir {self.workdir}",
                f"sentinel monitor {self.master_name} {HOST} {self.master_port} 2",
                f"sentinel down-after-milliseconds {self.master_name} 1000",
                f"sentinel failover-timeout {self.master_name} 5000",
                f"sentinel parallel-syncs {self.master_name} 1",
            ]
            if self.master_password:
                lines.append(f"sentinel auth-pass {self.master_name} {self.master_password}")
            if self.password:
                # The sentinels of a set share one password, and use it with each other.
                lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
            self.conf_path.write_text("\n".join(lines) + "\n")
        return [binary, str(self.conf_path), "--sentinel"]

    def master(self) -> dict[str, str]:
        """What this sentinel knows of its master (SENTINEL MASTER), as text."""
        flat = self.command("SENTINEL", "MASTER", self.master_name)
        return {
            flat[i].decode(): flat[i + 1].decode()
            for i in range(0, len(flat), 2)
            if isinstance(flat[i + 1], bytes)
        }


class RedisSentinelSet:
    """A Redis master, its replica and three sentinels on 127.0.0.1, each a process a test
    may kill, pause or restart; ``start()`` returns once the sentinels know the replica and
    each other, so a failover can happen.

    ``password`` is the servers' (requirepass), ``sentinel_password`` the sentinels'."""

    def __init__(
        self, workdir, master_name: str = "jkp", password: str = "", sentinel_password: str = ""
    ):
        workdir = Path(workdir)
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        first = RedisServer(workdir / "redis-a", password=password)
        self.servers = [first, RedisServer(workdir / "redis-b", password=password)]
        self.servers[1].replica_of = first.port
        self.sentinels = [
            RedisSentinel(
                workdir / f"sentinel{i}",
                first.port,
                master_name,
                master_password=password,
                password=sentinel_password,
            )
            for i in range(3)
        ]

    @property
    def addresses(self) -> str:
        """The sentinels as JKP_REDIS_SENTINELS takes them: ``host:port,host:port,...``."""
        return ",".join(f"{HOST}:{s.port}" for s in self.sentinels)

    def start(self) -> RedisSentinelSet:
        for server in [*self.servers, *self.sentinels]:
            server.start()
        self.wait(lambda: self._replica_in_sync(), 30, "the replica to sync")
        self.wait(lambda: self._sentinels_agree(), 30, "the sentinels to find each other")
        return self

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.stop()

    def master(self) -> RedisServer:
        """The server the sentinels name master now."""
        port = int(self.sentinels[0].master()["port"])
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisServer:
        """The other server."""
        master = self.master()
        return next(s for s in self.servers if s is not master)

    def wait_for_master(self, server: RedisServer, timeout: float = 30) -> None:
        """Wait until every sentinel names ``server`` master and it says it is one."""

        def promoted() -> bool:
            ports = {int(s.master().get("port", 0)) for s in self.sentinels}
            return ports == {server.port} and server.role() == "master"

        self.wait(promoted, timeout, f"{server.name} on port {server.port} to be master")

    def _replica_in_sync(self) -> bool:
        info = self.servers[1].command("INFO", "replication").decode()
        return "master_link_status:up" in info

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.master()
            if state.get("num-slaves") != "1" or state.get("num-other-sentinels") != "2":
                return False
        return True

    @staticmethod
    def wait(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (OSError, RuntimeError, KeyError, StopIteration, ValueError):
                pass  # not there yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)


# --------------------------------------------------------------------------
# Jupyter servers: Enterprise Gateway, JupyterLab


class _JupyterServer(_Server):
    """A Jupyter server child (EG, Lab): ready once ``ready_path`` answers 200 through its
    ``request`` (token, CA)."""

    ready_path = "/api"

    def request(self, method: str, path: str, body=None, timeout: float = 10.0):
        raise NotImplementedError

    def _is_ready(self) -> bool:
        try:
            status, _ = self.request("GET", self.ready_path, timeout=1.0)
        # Not HTTP: another server took the port after free_port(); ours then fails to bind,
        # exits, and start() says so.
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return status == 200

    def _start_timeout(self) -> float:
        return 30.0


class EnterpriseGateway(_JupyterServer):
    """Jupyter Enterprise Gateway 3.3 from its own venv, with one local kernel spec.

    The kernel spec named ``kernel_name`` (default ``python_kubernetes``, as in
    production) is a plain local ipykernel from the EG venv.  Kernels are
    launched by EG in their own sessions, so ``stop()``/``kill()`` also kill any
    process still running with a connection file from this gateway's runtime
    dir: nothing is left behind.
    """

    name = "enterprise-gateway"
    log_name = "eg.log"
    stop_timeout = 20.0  # EG shuts its kernels down on SIGTERM

    def __init__(
        self,
        workdir,
        port: int | None = None,
        kernel_name: str = "python_kubernetes",
        cull_idle_timeout: float = 0,
        cull_interval: float | None = None,
        extra_args=(),
        eg_venv=DEFAULT_EG_VENV,
        auth_token: str = "",
        certfile: str | None = None,
        keyfile: str | None = None,
        cafile: str | None = None,
        kernel_argv: list[str] | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        more_kernel_names: tuple[str, ...] = (),
        start_delay: float = 0,
    ):
        super().__init__(workdir, port)
        self.kernel_argv = kernel_argv
        # Seconds each kernel waits before it runs, as a pod waits to be scheduled.
        self.start_delay = start_delay
        # What this helper presents to a gateway that requires client certificates.
        self.client_cert, self.client_key = client_cert, client_key
        self.auth_token = auth_token
        self.certfile, self.keyfile, self.cafile = certfile, keyfile, cafile
        self.kernel_name = kernel_name
        # Further specs, each a plain local ipykernel like the first (several pools).
        self.kernel_names = [kernel_name, *more_kernel_names]
        self.cull_idle_timeout = cull_idle_timeout
        self.cull_interval = cull_interval
        self.extra_args = list(extra_args)
        self.eg_venv = Path(eg_venv).absolute()
        self.jupyter_path = self.workdir / "jupyter"
        self.runtime_dir = self.workdir / "runtime"
        self.data_dir = self.workdir / "data"
        self.config_dir = self.workdir / "config"
        self.ipython_dir = self.workdir / "ipython"
        self._write_kernel_specs()

    @property
    def url(self) -> str:
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def request(self, method: str, path: str, body=None, timeout: float = 10.0):
        """(status, JSON body) of a request to this gateway, with its token and CA."""
        headers = {"Authorization": f"token {self.auth_token}"} if self.auth_token else {}
        context = None
        if self.certfile:
            import ssl

            context = ssl.create_default_context(cafile=self.cafile)
            if self.client_cert:
                context.load_cert_chain(self.client_cert, self.client_key)
        return http_request(method, self.url + path, body, timeout, headers, context)

    def _write_kernel_specs(self) -> None:
        # Not resolved: the venv's python symlink is what makes it the venv.
        python = str(self.eg_venv / "bin" / "python")
        argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        if self.start_delay:
            launch = " ".join(shlex.quote(a) for a in argv)
            argv = ["sh", "-c", f"sleep {self.start_delay:g}; exec {launch}"]
        for name in self.kernel_names:
            spec_dir = self.jupyter_path / "kernels" / name
            spec_dir.mkdir(parents=True, exist_ok=True)
            spec = {
                # Tests may give another command, e.g. a kernel that dies at once.
                "argv": self.kernel_argv or argv,
                "display_name": f"Python 3 (local, as {name})",
                "language": "python",
            }
            (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")

    def _command(self) -> list[str]:
        exe = self.eg_venv / "bin" / "jupyter-enterprisegateway"
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: {BOOTSTRAP_HINT}")
        cmd = [
            str(exe),
            f"--ip={HOST}",
            f"--port={self.port}",
            "--port_retries=0",
            "--EnterpriseGatewayApp.list_kernels=True",
            # A create without a name (pybox's) gets the pooled spec, as in production.
            f"--EnterpriseGatewayApp.default_kernel_name={self.kernel_name}",
            f"--KernelSpecManager.whitelist={self.kernel_names!r}",
        ]
        if self.cull_idle_timeout:
            cmd.append(f"--RemoteMappingKernelManager.cull_idle_timeout={self.cull_idle_timeout}")
        if self.cull_interval is not None:
            cmd.append(f"--RemoteMappingKernelManager.cull_interval={self.cull_interval}")
        if self.auth_token:
            cmd.append(f"--EnterpriseGatewayApp.auth_token={self.auth_token}")
        if self.certfile:
            cmd.append(f"--EnterpriseGatewayApp.certfile={self.certfile}")
            cmd.append(f"--EnterpriseGatewayApp.keyfile={self.keyfile}")
        cmd.extend(self.extra_args)
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for d in (self.runtime_dir, self.data_dir, self.config_dir, self.ipython_dir):
            d.mkdir(parents=True, exist_ok=True)
        env["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (str(self.jupyter_path), os.environ.get("JUPYTER_PATH", "")) if p
        )
        env["JUPYTER_RUNTIME_DIR"] = str(self.runtime_dir)
        env["JUPYTER_DATA_DIR"] = str(self.data_dir)
        env["JUPYTER_CONFIG_DIR"] = str(self.config_dir)  # ignore ~/.jupyter config
        env["IPYTHONDIR"] = str(self.ipython_dir)  # kernels would create ~/.ipython
        env["EG_MIRROR_WORKING_DIRS"] = "True"
        env["EG_RESPONSE_IP"] = HOST  # only used by remote process proxies; keep it local
        env.pop("VIRTUAL_ENV", None)
        return env

    def _cleanup_leftovers(self) -> None:
        needle = str(self.runtime_dir) + os.sep
        for pid in _pids_with_arg(needle):
            _kill_pid_and_group(pid)

    def list_kernel_ids(self) -> list[str]:
        status, body = self.request("GET", "/api/kernels")
        if status != 200:
            raise RuntimeError(f"GET {self.url}/api/kernels -> {status}: {body}")
        return [k["id"] for k in body]


# --------------------------------------------------------------------------
# JupyterLab


class JupyterLab(_JupyterServer):
    """JupyterLab (Jupyter Server 2) from its own venv, in gateway mode at ``gateway_url``.

    It sends every ``KERNEL_*`` variable of its environment with each kernel start: here only
    ``KERNEL_USERNAME`` (EG refuses root), and, for a notebook, ``KERNEL_WORKING_DIR`` = the
    notebook's folder under ``root_dir``; so a ``root_dir`` inside jkp's share is served warm.
    An empty ``token`` turns Jupyter's login off (it listens on 127.0.0.1 only).
    """

    name = "jupyterlab"
    log_name = "lab.log"
    ready_path = "/api/status"

    def __init__(
        self,
        workdir,
        gateway_url: str,
        root_dir,
        port: int | None = None,
        username: str = "alice",
        token: str = "",
        gateway_token: str = "",
        lab_venv=DEFAULT_LAB_VENV,
    ):
        super().__init__(workdir, port)
        self.gateway_url = gateway_url
        self.root_dir = Path(root_dir).absolute()
        self.username = username
        self.token = token
        self.gateway_token = gateway_token
        self.lab_venv = Path(lab_venv).absolute()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def lab_url(self) -> str:
        """Where a browser opens Lab (logged in by the token, when there is one)."""
        return f"{self.url}/lab" + (f"?token={self.token}" if self.token else "")

    def request(self, method: str, path: str, body=None, timeout: float = 10.0):
        """(status, JSON body) of a request to Lab's server (its REST API), with its token."""
        headers = {"Authorization": f"token {self.token}"} if self.token else {}
        return http_request(method, self.url + path, body, timeout, headers)

    def _command(self) -> list[str]:
        exe = self.lab_venv / "bin" / "jupyter-lab"
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: {BOOTSTRAP_HINT}")
        cmd = [
            str(exe),
            f"--ip={HOST}",
            f"--port={self.port}",
            "--port_retries=0",
            "--no-browser",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--gateway-url={self.gateway_url}",
            f"--IdentityProvider.token={self.token}",
            # No requests to pypi.org or jupyter.org from the server.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if self.gateway_token:
            cmd.append(f"--GatewayClient.auth_token={self.gateway_token}")
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        return cmd

    def _env(self) -> dict[str, str]:
        # Only the user's KERNEL_* variable: the rest of ours would reach the kernels.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
        env["KERNEL_USERNAME"] = self.username
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        env["HOME"] = str(home)  # Lab keeps its settings and workspaces in its workdir
        env["JUPYTER_CONFIG_DIR"] = str(home / "config")
        env["JUPYTER_DATA_DIR"] = str(home / "data")
        env["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
        env.pop("VIRTUAL_ENV", None)
        return env


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

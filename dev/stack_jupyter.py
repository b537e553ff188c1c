"""Jupyter servers for the local stack: Enterprise Gateway with local kernel specs, and
JupyterLab in gateway mode, each from its own venv.

Part of dev/localstack.py, which re-exports its public names.  Stdlib only, no jkp imports.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import time
from pathlib import Path

from stack_processes import (
    BOOTSTRAP_HINT,
    HOST,
    REPO,
    _kill_pid_and_group,
    _pids_with_arg,
    _Server,
    http_request,
)

DEFAULT_EG_VENV = REPO / ".venv-eg"
DEFAULT_LAB_VENV = REPO / ".venv-lab"

# EG 3.3 puts a kernel it is adding in its list a few event-loop turns before it gives the
# kernel a last_activity: a list in between fails with a 500 and this in its traceback.
KERNEL_BEING_ADDED = "has no attribute 'last_activity'"


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

    def _server_command(self, exe: Path) -> list[str]:
        """The start of its command line: ``exe`` from its venv, on its port of 127.0.0.1 only."""
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: {BOOTSTRAP_HINT}")
        return [str(exe), f"--ip={HOST}", f"--port={self.port}", "--port_retries=0"]


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
        list_kernels: bool = True,
    ):
        super().__init__(workdir, port)
        self.list_kernels = list_kernels
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
        cmd = [
            *self._server_command(self.eg_venv / "bin" / "jupyter-enterprisegateway"),
            f"--EnterpriseGatewayApp.list_kernels={self.list_kernels}",
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
        """The ids of the kernels EG runs; asked again briefly while the list fails on a
        kernel being added (see KERNEL_BEING_ADDED)."""
        for pause in (0.01, 0.02, 0.05, 0.1, 0.2, None):
            status, body = self.request("GET", "/api/kernels")
            if status == 200:
                return [k["id"] for k in body]
            traceback = body.get("traceback") if isinstance(body, dict) else None
            being_added = status == 500 and KERNEL_BEING_ADDED in str(traceback)
            if not being_added or pause is None:
                raise RuntimeError(f"GET {self.url}/api/kernels -> {status}: {body}")
            time.sleep(pause)


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
        cmd = [
            *self._server_command(self.lab_venv / "bin" / "jupyter-lab"),
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

"""The local stack's plumbing: a child server started in its own process group, waited
for, stopped, killed or paused (``_Server``), and the helpers around it (free ports, tiny
JSON-over-HTTP requests, finding leftover processes).

Part of dev/localstack.py, which re-exports its public names.  Stdlib only, no jkp imports.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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

"""Redis for the local stack: a redis-server, a sentinel, and a sentinel set (master,
replica, three sentinels), each a child process a test may kill, pause or restart.

Part of dev/localstack.py, which re-exports its public names.  Stdlib only, no jkp imports.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from stack_processes import BOOTSTRAP_HINT, HOST, _Server


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

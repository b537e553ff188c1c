"""What every benchmark here stands on: the processes it starts (jkp, the gateway simulator;
each stopped whatever happens), timing summaries and CPU readings, and the frame that sets a run
up, runs its rounds, stops everything and reports."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "dev"))
from localstack import HOST, RedisServer, free_port  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
KERNEL_NAME = "python_kubernetes"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Proc:
    """A child in its own process group (so the terminal's Ctrl-C reaches only us), logged."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict | None = None):
        self.name, self.log_path = name, log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # also whatever it left in its group
        except ProcessLookupError:
            pass
        self.proc.wait()


class Jkp(Proc):
    """One jkp replica: ``python -m jkp`` with a pool of ``target`` kernels (its most)."""

    def __init__(self, work: Path, name: str, redis: RedisServer, gateway_url: str, key: str,
                 target: int, extra: tuple[str, ...], pop_timeout: float = 30):  # fmt: skip
        self.port, self.target = free_port(), target
        self.extra = extra
        self.url = f"http://{HOST}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JKP_")}
        env["JUPYTER_CONFIG_DIR"] = str(work / "jupyter-config")  # no ~/.jupyter config
        cmd = [
            PYTHON,
            "-m",
            "jkp",
            f"--ip={HOST}",
            f"--port={self.port}",
            f"--RedisStore.redis_url={redis.url}",
            f"--RedisStore.key={key}",
            f"--GatewayClient.url={gateway_url}",
            f"--PoolManager.working_dir={work / 'shared'}",
            "--PoolManager.nfs_volume_server=",
            f"--max-pending-kernels={target}",
            f"--PoolManager.pop_timeout={pop_timeout}",
            *extra,
        ]
        super().__init__(name, cmd, work / f"{name}.log", env)

    async def status(self) -> dict:
        return await get_json(self.url + "/api/pool")

    async def wait_full(self, timeout: float) -> float:
        """Wait until the pool holds ``target`` idle kernels and none is starting; seconds."""
        t0, st, next_report = time.monotonic(), None, 30
        while True:
            self.check_alive()
            try:
                st = await self.status()
                if st["idle"] == self.target and st["starting"] == 0:
                    return time.monotonic() - t0
            except (OSError, HTTPClientError):
                pass  # not listening yet
            waited = time.monotonic() - t0
            if waited > timeout:
                raise RuntimeError(f"{self.name}: pool not full after {timeout:.0f}s: {st}")
            if waited > next_report:  # a slow fill should explain itself
                log(f"  {self.name}: pool not full after {waited:.0f}s: {st}")
                next_report += 30
            await asyncio.sleep(0.2)

    async def served_pops(self) -> tuple[float, int]:
        """(seconds, count) of the pops jkp served so far, from its own /metrics."""
        response = await AsyncHTTPClient().fetch(self.url + "/metrics")
        text = response.body.decode()
        values = {}
        for name in ("sum", "count"):
            # Summed over pools: the bench runs one.
            samples = re.findall(
                rf'^jkp_pop_duration_seconds_{name}{{outcome="served",pool="[^"]*"}} (\S+)$',
                text,
                re.M,
            )
            values[name] = sum(float(v) for v in samples)
        return values["sum"], int(values["count"])

    def rss_mb(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
        return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


class Simulator(Proc):
    def __init__(self, work: Path, name: str, latency_ms: float = 0, start_latency_s: float = 0):
        sim = str(REPO / "bench" / "gateway_simulator.py")
        cmd = [PYTHON, sim, "--port", "0", "--ip", HOST, "--stats", f"--latency-ms={latency_ms}",
               f"--start-latency-s={start_latency_s}"]  # fmt: skip
        super().__init__(name, cmd, work / f"{name}.log")
        self.url = None

    async def wait_listening(self) -> str:
        for _ in range(200):
            self.check_alive()
            m = re.search(r"listening on (http://\S+)", self.log_path.read_text())
            if m:
                self.url = m.group(1)
                return self.url
            await asyncio.sleep(0.05)
        raise RuntimeError("gateway simulator did not start")


class Stack:
    """Everything started, stopped in reverse order whatever happens."""

    def __init__(self):
        self.items: list = []

    def add(self, item):
        self.items.append(item)
        return item

    def remove(self, item) -> None:
        item.stop()
        self.items.remove(item)

    def stop_all(self) -> None:
        while self.items:
            item = self.items.pop()
            try:
                item.stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: stopping {item!r} failed: {e}", file=sys.stderr)


async def get_json(url: str, method: str = "GET", body=None, timeout: float = 30) -> dict:
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(
            url,
            method=method,
            body=None if body is None else json.dumps(body),
            request_timeout=timeout,
        )
    )
    return json.loads(response.body) if response.body else None


def summary(seconds: list[float]) -> dict:
    """min/p50/p95/p99/max in ms; percentiles interpolated ("inclusive"), so with few samples
    p99 lies between the two largest."""
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {
        "n": len(ms),
        "min_ms": ms[0],
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time a process used so far: the sum over its threads of the scheduler's own count,
    in nanoseconds (/proc/<pid>/task/*/schedstat), where /proc/<pid>/stat counts in clock ticks
    (10 ms) too coarse for a few ms per pop. Threads that already exited are not in it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return total / 1e9


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


async def machine_busy(seconds: float) -> float:
    """Share of all CPUs busy during the next ``seconds``."""
    busy0, total0 = machine_jiffies()
    await asyncio.sleep(seconds)
    busy1, total1 = machine_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


async def metric_total(jkp: Jkp, name: str, **labels: str) -> float:
    """A sample of jkp's /metrics summed over the series with ``labels`` (all pools), e.g.
    ``metric_total(jkp, "jkp_kernel_starts_total", outcome="ready")``."""
    text = (await AsyncHTTPClient().fetch(jkp.url + "/metrics")).body.decode()
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    return sum(
        float(value)
        for series, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M)
        if wanted <= set(series.split(","))
    )


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model.group(1) if model else platform.processor(),
        "python": platform.python_version(),
        "jkp_git": git,  # "-dirty": jkp was being edited while this ran
    }


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops us as Ctrl-C does: through main's finally


def begin_run(prefix: str, quick: bool) -> tuple[Path, Stack, dict, float]:
    """Set a run up: SIGTERM stops it as Ctrl-C does, a work dir (``prefix``, with the pool's
    ``shared`` dir inside) for its logs, an empty Stack, the figures' header (``quick``, when
    it started, the machine) and the monotonic time it started."""
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "shared").mkdir()
    out = {
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }
    return work, Stack(), out, time.monotonic()


def run_and_report(
    rounds, work: Path, stack: Stack, out: dict, started: float, report_of, path: Path, keep: bool
) -> int:
    """Run a benchmark's ``rounds`` (a coroutine filling ``out``), stop everything it started,
    then print ``report_of(out)`` and write ``out`` to ``path``; the exit status."""
    ok = False
    try:
        asyncio.run(rounds)
        ok = True
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
    except Exception:
        traceback.print_exc()
    finally:
        log("stopping everything")
        stack.stop_all()
    out["duration_s"] = time.monotonic() - started
    if not ok:
        print(f"bench: failed; logs kept in {work}", file=sys.stderr)
        return 1
    print()
    print(report_of(out))
    print(f"\ntotal run time {out['duration_s']:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"figures written to {path}")
    if keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0

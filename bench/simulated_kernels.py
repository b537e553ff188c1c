"""The simulated kernels of bench/gateway_simulator.py (benchmarks only): their state, the
simulator that holds them, and the opt-in stats of what the gateway saw."""

from __future__ import annotations

import collections
import logging
import time
import uuid
from datetime import datetime, timezone

from tornado.websocket import WebSocketHandler

log = logging.getLogger("gateway_simulator")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(dt: datetime) -> str:
    """ISO 8601 with a Z for UTC, as jupyter_server writes dates."""
    return dt.isoformat().replace("+00:00", "Z")


class Kernel:
    """One simulated kernel: plain state, no task or timer of its own, so 1000s cost little."""

    __slots__ = (
        "id", "name", "username", "session", "last_activity", "execution_count", "sockets", "life"
    )  # fmt: skip

    def __init__(self, kernel_id: str, name: str, username: str, life: dict[str, float | None]):
        self.id = kernel_id
        self.name = name
        self.username = username
        self.session = uuid.uuid4().hex  # the kernel's own session id, as ipykernel has one
        self.last_activity = utcnow()
        self.execution_count = 0
        self.sockets: set[WebSocketHandler] = set()
        self.life = life

    def model(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "last_activity": isoformat(self.last_activity),
            "execution_state": "idle",  # requests finish before anyone can look
            "connections": len(self.sockets),
        }


class Simulator:
    """All kernels, by id, and the settings that shape their answers."""

    def __init__(
        self, kernel_name: str, latency: float, cull_idle_timeout: float, start_latency: float = 0
    ):
        self.kernel_name = kernel_name
        self.latency = latency
        self.start_latency = start_latency
        self.cull_idle_timeout = cull_idle_timeout
        self.kernels: dict[str, Kernel] = {}
        self.starting: set[str] = set()  # ids whose POST is still waiting for the start latency
        # Each kernel's life, also after it is gone: what it cost while nobody used it.
        self.lives: list[dict[str, float | None]] = []

    def new_life(self, kernel_id: str) -> dict[str, float | None]:
        life = {"id": kernel_id, "requested": time.time(), "ready": None, "pooled": None,
                "handed_out": None, "deleted": None}  # fmt: skip
        self.lives.append(life)
        return life

    def remove(self, kernel_id: str) -> None:
        kernel = self.kernels.pop(kernel_id)
        kernel.life["deleted"] = time.time()
        for ws in list(kernel.sockets):  # EG closes the websockets of a kernel that is gone
            ws.close()

    def cull(self) -> None:
        """One sweep over all kernels instead of a timer per kernel."""
        now = utcnow()
        for kernel in list(self.kernels.values()):
            idle = (now - kernel.last_activity).total_seconds()
            if idle > self.cull_idle_timeout and not kernel.sockets:
                log.info("culling kernel %s, idle %.0fs", kernel.id, idle)
                self.remove(kernel.id)


class Stats:
    """Opt-in (--stats): what the benchmark cannot ask jkp, seen from the gateway's side.

    kernel_info requests separated by less than ``gap`` seconds form one burst, so a burst that
    follows a quiet pool is one activation sweep. ``max_in_flight`` is the most requests received
    and not yet answered at once during it: the sweep's concurrency, visible only with
    ``--latency-ms`` > 0 (without latency every request is answered before the next is read).
    """

    def __init__(self, gap: float):
        self.gap = gap
        self.requests: collections.Counter[str] = collections.Counter()
        self.sockets: set[WebSocketHandler] = set()
        self.in_flight = 0
        self.burst: dict | None = None
        self.bursts: collections.deque[dict] = collections.deque(maxlen=20)

    def opened(self, ws: WebSocketHandler) -> None:
        self.sockets.add(ws)
        if self.burst is not None:
            self.burst["max_open"] = max(self.burst["max_open"], len(self.sockets))

    def closed(self, ws: WebSocketHandler) -> None:
        self.sockets.discard(ws)

    def request(self, msg_type: str, kernel_id: str) -> None:
        self.requests[msg_type] += 1
        self.in_flight += 1
        if msg_type != "kernel_info_request":
            return
        now = time.time()
        self._close_burst(now)
        if self.burst is None:
            self.burst = {"first": now, "count": 0, "kernels": set(), "max_in_flight": 0,
                          "max_open": len(self.sockets)}  # fmt: skip
        burst = self.burst
        burst.update(last=now, count=burst["count"] + 1)
        burst["max_in_flight"] = max(burst["max_in_flight"], self.in_flight)
        burst["kernels"].add(kernel_id)

    def answered(self) -> None:
        self.in_flight -= 1

    def _close_burst(self, now: float) -> None:
        if self.burst is not None and now - self.burst["last"] > self.gap:
            burst = self.burst
            self.bursts.append({**burst, "kernels": len(burst["kernels"])})
            self.burst = None

    def report(self) -> dict:
        now = time.time()
        self._close_burst(now)
        current = self.burst and {**self.burst, "kernels": len(self.burst["kernels"])}
        return {
            "now": now,
            "requests": dict(self.requests),
            "open_websockets": len(self.sockets),
            "in_flight": self.in_flight,
            "bursts": list(self.bursts),  # completed ones, oldest first
            "current_burst": current,
        }

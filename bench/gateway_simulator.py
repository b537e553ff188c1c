"""A gateway simulator for scale benchmarks only.

This is NOT Enterprise Gateway. It fakes the small subset of EG's REST and websocket protocol
that jkp uses, with in-memory kernels that answer at once, so a benchmark can pool 1000 kernels
on 2 cores. Tests must never use it in place of the real EG: it runs no code, checks far less
than EG does, and differs from EG wherever EG's behaviour is not needed for load.

    python bench/gateway_simulator.py --port 0 --ip 127.0.0.1 [--kernel-name python_kubernetes]
                                      [--latency-ms 0] [--start-latency-s 0]
                                      [--cull-idle-timeout 0] [--stats]

prints ``listening on http://<ip>:<port>`` once it listens and serves until SIGINT/SIGTERM.
``--start-latency-s`` makes each start take that long, as EG on Kubernetes does: its
``POST /api/kernels`` answers (201) only once the kernel's pod runs, and until then the kernel
is unknown to GET, DELETE and the websocket (404), as in EG, whose kernel manager records a
kernel only once its start returned.
``--stats`` adds ``GET /bench/stats``: request counts, open websockets, and the recent bursts of
kernel_info requests (e.g. one activation sweep of jkp), as bench/run.py reads them; and
``GET /bench/kernels``: each kernel's life (requested, ready, pooled, handed out, deleted, in
epoch seconds), from which bench/traces.py integrates idle kernel-seconds exactly.
Needs only tornado and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import uuid
from http.client import responses
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler

# Run as a script or loaded by path (tests): its sibling is found beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulated_kernels import Kernel, Simulator, Stats, isoformat, utcnow  # noqa: E402

log = logging.getLogger("gateway_simulator")

MAX_ENV_VALUE_LENGTH = 4096  # EG's limit on one env value
UNSAFE_ENV_CHARS = ("$", "`", "\n")
UNAUTHORIZED_USERS = {"root"}  # EG's default unauthorized_users
PROTOCOL_VERSION = "5.3"
# Shell requests the simulator answers, and the reply type of each: None for comm messages,
# which get no shell reply (a comm_msg to jkp's set-up comm is answered on that comm).
REPLY_TYPES = {
    "kernel_info_request": "kernel_info_reply",
    "execute_request": "execute_reply",
    "comm_open": None,
    "comm_msg": None,
}


class JSONErrors:
    """Errors as jupyter_server/EG write them: JSON ``{"message", "reason"}``."""

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else ""
        reason = responses.get(status_code, "Unknown HTTP Error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": reason}))


class BaseHandler(JSONErrors, RequestHandler):
    @property
    def sim(self) -> Simulator:
        return self.settings["simulator"]

    def kernel(self, kernel_id: str) -> Kernel:
        kernel = self.sim.kernels.get(kernel_id)
        if kernel is None:
            raise HTTPError(404, f"Kernel does not exist: {kernel_id}")
        return kernel

    def write_json(self, data) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class ApiHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"version": "1.24.0", "gateway_version": "3.3.0-simulator"})


class KernelsHandler(BaseHandler):
    def get(self) -> None:
        # Real EG answers this only with list_kernels on; the simulator always does.
        self.write_json([k.model() for k in self.sim.kernels.values()])

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise HTTPError(400, "Invalid JSON in body of request") from None
        if not isinstance(body, dict) or not isinstance(body.get("env", {}), dict):
            raise HTTPError(400)
        env = body.get("env", {})
        for key, value in env.items():
            if not isinstance(value, str):
                raise HTTPError(400, f"Environment variable '{key}' value must be a string")
            if len(value) > MAX_ENV_VALUE_LENGTH:
                raise HTTPError(400, f"Environment variable '{key}' exceeds maximum length")
            if any(c in value for c in UNSAFE_ENV_CHARS):
                raise HTTPError(400, f"Environment variable '{key}' contains unsafe characters")
        name = body.get("name") or self.sim.kernel_name
        if name != self.sim.kernel_name:
            raise HTTPError(404, f"No such kernel named {name}")
        kernel_id = env.get("KERNEL_ID") or str(uuid.uuid4())
        try:
            valid = str(uuid.UUID(kernel_id, version=4)) == kernel_id
        except ValueError:
            valid = False
        if not valid:
            raise HTTPError(400, f"Invalid v4 UUID value in ['env']['KERNEL_ID']: '{kernel_id}'")
        if kernel_id in self.sim.kernels or kernel_id in self.sim.starting:
            raise HTTPError(400, f"Kernel already exists: {kernel_id}")
        # Stricter than EG, which falls back to its own user: jkp must always send one.
        username = env.get("KERNEL_USERNAME", "")
        if not username or username in UNAUTHORIZED_USERS:
            raise HTTPError(
                403,
                f"User '{username}' is not authorized to start kernel '{name}'. "
                "Ensure KERNEL_USERNAME is set to an appropriate value and retry the request.",
            )
        life = self.sim.new_life(kernel_id)
        if self.sim.start_latency:
            # The request is answered once the kernel runs, as EG's is once the pod runs; a
            # client that gave up meanwhile still gets its kernel started, as on Kubernetes.
            self.sim.starting.add(kernel_id)
            try:
                await asyncio.sleep(self.sim.start_latency)
            finally:
                self.sim.starting.discard(kernel_id)
        kernel = self.sim.kernels[kernel_id] = Kernel(kernel_id, name, username, life)
        life["ready"] = time.time()
        self.set_status(201)
        self.set_header("Location", f"/api/kernels/{kernel_id}")
        self.write_json(kernel.model())


class StatsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(self.settings["stats"].report())


class LivesHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"now": time.time(), "kernels": self.sim.lives})


class KernelHandler(BaseHandler):
    def get(self, kernel_id: str) -> None:
        self.write_json(self.kernel(kernel_id).model())

    def delete(self, kernel_id: str) -> None:
        self.kernel(kernel_id)
        self.sim.remove(kernel_id)
        self.set_status(204)
        self.finish()


class ChannelsHandler(JSONErrors, WebSocketHandler):
    """A kernel's websocket, in jupyter_server 1.x's JSON framing."""

    kernel: Kernel

    def prepare(self) -> None:
        # Unknown kernel: a plain 404 before the upgrade, as jupyter_server answers.
        sim: Simulator = self.settings["simulator"]
        kernel_id = self.path_kwargs["kernel_id"]
        if kernel_id not in sim.kernels:
            raise HTTPError(404, f"Kernel does not exist: {kernel_id}")
        self.kernel = sim.kernels[kernel_id]

    def open(self, kernel_id: str) -> None:
        self.kernel.sockets.add(self)
        if self.settings["stats"]:
            self.settings["stats"].opened(self)

    def on_close(self) -> None:
        self.kernel.sockets.discard(self)
        if self.settings["stats"]:
            self.settings["stats"].closed(self)

    async def on_message(self, raw: str | bytes) -> None:
        # Tornado awaits this before reading the next frame: one request at a time per socket.
        try:
            request = json.loads(raw)
            header = request["header"]
            answered = header["msg_type"] in REPLY_TYPES
            reply_type = REPLY_TYPES.get(header["msg_type"])
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring malformed message on kernel %s", self.kernel.id)
            return
        self.kernel.last_activity = utcnow()
        if not answered or request.get("channel", "shell") != "shell":
            return  # nothing else is needed by jkp; a real kernel would answer or ignore
        if header["msg_type"] == "comm_msg":
            self.record_set_up(request)
        stats: Stats | None = self.settings["stats"]
        if stats is None:
            await self.reply(request, reply_type)
            return
        stats.request(header["msg_type"], self.kernel.id)
        try:
            await self.reply(request, reply_type)
        finally:
            stats.answered()

    def record_set_up(self, request: dict) -> None:
        """jkp's warm-up asks the set-up comm a probe (the kernel is then pooled); the first
        other message on it is a pop's set-up (the kernel is handed out)."""
        data = request.get("content", {}).get("data") or {}
        life = self.kernel.life
        step = "pooled" if isinstance(data, dict) and data.get("probe") else "handed_out"
        if life[step] is None:
            life[step] = time.time()

    async def reply(self, request: dict, reply_type: str | None) -> None:
        header = request["header"]
        if self.settings["simulator"].latency:
            await asyncio.sleep(self.settings["simulator"].latency)
        if reply_type is None:
            # comm_open: only busy and idle. comm_msg: the comm answers as jkp's set-up comm
            # does, with {"status": "ok"} on the same comm (the simulator sets nothing up).
            comm_id = request.get("content", {}).get("comm_id")
            try:
                self.send("iopub", "status", header, {"execution_state": "busy"})
                if header["msg_type"] == "comm_msg":
                    data = {"comm_id": comm_id, "data": {"status": "ok"}}
                    self.send("iopub", "comm_msg", header, data)
                self.send("iopub", "status", header, {"execution_state": "idle"})
            except WebSocketClosedError:
                return
            self.kernel.last_activity = utcnow()
            return
        if reply_type == "kernel_info_reply":
            content = {
                "status": "ok",
                "protocol_version": PROTOCOL_VERSION,
                "implementation": "simulator",
                "implementation_version": "0",
                "language_info": {"name": "python"},
                "banner": "",
            }
        else:
            if not request.get("content", {}).get("silent"):
                self.kernel.execution_count += 1  # ipykernel counts only non-silent runs
            content = {
                "status": "ok",
                "execution_count": self.kernel.execution_count,
                "user_expressions": {},
                "payload": [],
            }
        try:
            self.send("iopub", "status", header, {"execution_state": "busy"})
            self.send("shell", reply_type, header, content)
            self.send("iopub", "status", header, {"execution_state": "idle"})
        except WebSocketClosedError:
            return  # the client left (or the kernel was deleted) during the latency
        self.kernel.last_activity = utcnow()

    def send(self, channel: str, msg_type: str, parent: dict, content: dict) -> None:
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": self.kernel.session,
            "username": self.kernel.username,
            "date": isoformat(utcnow()),
            "version": PROTOCOL_VERSION,
        }
        # jupyter_server 1.x sends the deserialized message: msg_id and msg_type are also at
        # the top level (jkp reads msg_type there), and "buffers" is an empty list.
        message = {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": msg_type,
            "parent_header": parent,
            "metadata": {},
            "content": content,
            "buffers": [],
            "channel": channel,
        }
        self.write_message(json.dumps(message))


def make_app(sim: Simulator, stats: Stats | None = None) -> Application:
    kernel = r"/api/kernels/(?P<kernel_id>[^/]+)"
    routes = [
        (r"/api/?", ApiHandler),
        (r"/api/kernels/?", KernelsHandler),
        (kernel + "/?", KernelHandler),
        (kernel + "/channels", ChannelsHandler),
    ]
    if stats is not None:
        routes += [(r"/bench/stats", StatsHandler), (r"/bench/kernels", LivesHandler)]
    return Application(
        routes,
        simulator=sim,
        stats=stats,
        log_function=lambda handler: None,  # no access log: it would dominate the CPU at scale
    )


async def serve(args: argparse.Namespace) -> None:
    sim = Simulator(
        args.kernel_name, args.latency_ms / 1000, args.cull_idle_timeout, args.start_latency_s
    )
    # A deep backlog so hundreds of simultaneous websocket connects are not dropped and retried.
    sockets = bind_sockets(args.port, address=args.ip, backlog=2048)
    stats = Stats(args.stats_gap) if args.stats else None
    server = HTTPServer(make_app(sim, stats))
    server.add_sockets(sockets)
    if args.cull_idle_timeout > 0:
        interval = max(1.0, min(args.cull_idle_timeout / 2, 30.0))
        PeriodicCallback(sim.cull, interval * 1000).start()
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    print(f"listening on http://{host}:{sockets[0].getsockname()[1]}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    for kernel_id in list(sim.kernels):
        sim.remove(kernel_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--kernel-name", default="python_kubernetes", help="the one kernel spec")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each reply")
    parser.add_argument(
        "--start-latency-s",
        type=float,
        default=0.0,
        help="seconds a kernel takes to start: POST /api/kernels answers after them",
    )
    parser.add_argument(
        "--cull-idle-timeout",
        type=float,
        default=0.0,
        help="seconds idle (and unconnected) before a kernel is culled; 0: never",
    )
    parser.add_argument("--stats", action="store_true", help="serve GET /bench/stats")
    parser.add_argument(
        "--stats-gap",
        type=float,
        default=1.0,
        help="seconds without a kernel_info request that end a burst in the stats",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())

"""JKPManagerApp: the ``jkpmanager`` command. It wires the services together and serves them."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from typing import Any

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from jupyter_core.utils import ensure_event_loop
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.log import LogFormatter
from traitlets import Instance, TraitError, default

from jkp._version import __version__
from jkp.handlers import channels as channel_handlers
from jkp.handlers import kernels as kernel_handlers
from jkp.handlers import pool as pool_handlers
from jkp.handlers import status as status_handlers
from jkp.handlers.base import NotFoundHandler
from jkp.log import JSONFormatter
from jkp.services.bridges import SessionBridges
from jkp.services.gateway import GatewayClient
from jkp.services.kernels import KernelService
from jkp.services.metrics import Metrics
from jkp.services.pool import PoolManager
from jkp.services.pool.registry import PoolRegistry
from jkp.services.store import RedisStore
from jkp.traits import (
    EnvBool,
    EnvDict,
    EnvFloat,
    EnvInt,
    EnvUnicode,
    EnvValueError,
    check_options,
)

# jkp refuses large bodies itself, with a JSON 413, from Content-Length before reading them
# (APIHandler); tornado's own check, which answers a bare 400, must never come first.
_TORNADO_MAX_BODY_BYTES = 1 << 62

# Seconds between pings on the kernel websockets jkp bridges, as jupyter_server's default.
_WEBSOCKET_PING_INTERVAL = 30

aliases = {
    **base_aliases,
    "ip": "JKPManagerApp.ip",
    "port": "JKPManagerApp.port",
    "eg-endpoint": "GatewayClient.url",
    "redis-url": "RedisStore.redis_url",
    "redis-key": "RedisStore.key",
    "max-pending-kernels": "PoolManager.max_pending_kernels",
    "kernel-name": "PoolManager.kernel_name",
    "working-dir": "PoolManager.working_dir",
}


class JKPManagerApp(JupyterApp):
    """Keeps a pool of warm Enterprise Gateway kernels and hands them out over HTTP."""

    name = "jkpmanager"
    version = __version__
    description = """A pool of warm Jupyter kernels on Enterprise Gateway.

    Keeps max_pending_kernels idle kernels started on EG, their models in Redis, and hands one
    out per POST /api/kernels/pop/ {"userId": ...}, already in <working_dir>/<userId>. It also
    serves EG's own kernels API: point a Jupyter client's gateway URL at jkp, and its creates
    are served warm from the pools, the rest passed through to EG.
    Every option also reads a JKP_* environment variable (see --help-all);
    precedence: command line > config file > environment > default.
    """
    examples = """
    jkpmanager --config jkp_config.py
    jkpmanager --port=8080 --eg-endpoint=http://enterprise-gateway:8888 --max-pending-kernels=5
    jkpmanager --PoolManager.activation_interval=600
    """

    aliases = aliases
    flags = base_flags
    classes = [GatewayClient, RedisStore, PoolManager, KernelService]

    _log_formatter_cls = LogFormatter

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @default("log_format")
    def _log_format_default(self) -> str:
        return (
            "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s]%(end_color)s %(message)s"
        )

    @default("log_datefmt")
    def _log_datefmt_default(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    ip = EnvUnicode("127.0.0.1", env="JKP_SERVER_IP", help="Interface jkp listens on").tag(
        config=True
    )

    port = EnvInt(8080, env="JKP_SERVER_PORT", help="Port jkp listens on", min=0, max=65535).tag(
        config=True
    )

    auth_token = EnvUnicode(
        "",
        env="JKP_AUTH_TOKEN",
        help=(
            "Token clients must send as 'Authorization: token <t>' (or 'Bearer <t>') on "
            "every endpoint but /api/health and /api/ready; empty: no authentication"
        ),
    ).tag(config=True)

    shutdown_timeout = EnvFloat(
        5.0,
        env="JKP_SHUTDOWN_TIMEOUT",
        help="Seconds pops in flight may take to finish after SIGTERM/SIGINT",
        min=0,
    ).tag(config=True)

    log_json = EnvBool(
        False,
        env="JKP_LOG_JSON",
        help=(
            "Log JSON lines (time, level, logger, message) for log aggregation instead of "
            "Jupyter's text format"
        ),
    ).tag(config=True)

    pools = EnvDict(
        env="JKP_POOLS",
        help="Warm pools by EG kernel spec name, each a dict of PoolManager options by trait "
        "name plus 'size' (its max_pending_kernels) and 'min' (its min_pending_kernels), e.g. "
        "{'python_kubernetes': {'size': 10, 'min': 2}, "
        "'r_kubernetes': {'size': 2, 'kernel_image': 'elyra/kernel-r:3.2.2'}}; options a pool "
        "does not set come from PoolManager's. Empty: one pool of PoolManager.kernel_name. "
        "In the environment, JSON",
    ).tag(config=True)

    gateway = Instance(GatewayClient, allow_none=True)
    store = Instance(RedisStore, allow_none=True)
    metrics = Instance(Metrics, allow_none=True)
    pool_registry = Instance(PoolRegistry, allow_none=True)
    # The default pool (kernelName absent), as the design names it.
    pool_manager = Instance(PoolManager, allow_none=True)
    kernels = Instance(KernelService, allow_none=True)
    bridges = Instance(SessionBridges, allow_none=True)
    web_app = Instance(web.Application, allow_none=True)
    http_server = Instance(HTTPServer, allow_none=True)

    def initialize(self, argv: Any = None) -> None:
        """Parse the command line and config, build the services and the web application."""
        super().initialize(argv)
        if self._dispatching:
            return
        try:
            self.init_configurables()
            self.check_config()
        except (EnvValueError, TraitError) as e:
            self.log.critical("Bad configuration: %s", e)
            self.exit(1)
        self.init_logging()
        self.init_webapp()

    def init_logging(self) -> None:
        """Switch to JSON lines when asked; tornado's own loggers then log through ours."""
        if self.log_json:
            for handler in self.log.handlers:
                handler.setFormatter(JSONFormatter())
        for name in ("tornado.access", "tornado.application", "tornado.general"):
            logger = logging.getLogger(name)
            logger.parent = self.log
            logger.propagate = True

    def init_configurables(self) -> None:
        self.gateway = GatewayClient(parent=self, log=self.log)
        self.store = RedisStore(parent=self, log=self.log)
        self.metrics = Metrics()
        self.pool_registry = PoolRegistry(
            self.pools,
            gateway=self.gateway,
            store=self.store,
            metrics=self.metrics,
            parent=self,
            log=self.log,
        )
        self.pool_manager = self.pool_registry.default
        self.kernels = KernelService(
            self.pool_registry, self.gateway, self.store.aliases(), parent=self, log=self.log
        )
        self.bridges = SessionBridges(
            self.store.client, self.store.bridges_channel, parent=self, log=self.log
        )

    def check_config(self) -> None:
        """Read and validate every option once, so a bad value stops start-up now."""
        for configurable in (self, self.gateway, self.store, self.kernels):
            check_options(configurable)
        self.pool_registry.check_config()

    def init_webapp(self) -> None:
        # The pop's route comes before EG's /api/kernels/{id}.
        handlers = [
            *pool_handlers.default_handlers,
            *status_handlers.default_handlers,
            *channel_handlers.default_handlers,
            *kernel_handlers.default_handlers,
        ]
        self.web_app = web.Application(
            handlers,
            default_handler_class=NotFoundHandler,
            auth_token=self.auth_token,
            pools=self.pool_registry,
            kernels=self.kernels,
            bridges=self.bridges,
            # Pings find bridged websockets whose client vanished without a close.
            websocket_ping_interval=_WEBSOCKET_PING_INTERVAL,
            metrics=self.metrics,
            gateway=self.gateway,
            store=self.store,
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        log = (
            self.log.debug if status < 400 else self.log.warning if status < 500 else self.log.error
        )
        request = handler.request
        # The path only: a query string may carry what a client should not have sent.
        log("%d %s %s %.2fms", status, request.method, request.path, 1000 * request.request_time())

    async def start_services(self) -> None:
        """Start the pool (registered in Redis before the first pop can come), and listen."""
        try:
            unchecked = await self.pool_registry.check_kernel_specs()
        except TraitError as e:
            self.log.critical("Bad configuration: %s", e)
            self.exit(1)
        await self.pool_registry.start()
        await self.bridges.start()
        self.http_server = HTTPServer(self.web_app, max_body_size=_TORNADO_MAX_BODY_BYTES)
        self.http_server.listen(self.port, self.ip)
        self.log.info("jkp %s listening on http://%s:%d", __version__, self.ip, self.port)
        if unchecked:
            self.log.warning("%s", unchecked)
        self.warn_if_exposed()

    def warn_if_exposed(self) -> None:
        """Say loudly when jkp listens beyond loopback with no token."""
        if not self.auth_token and not _is_loopback(self.ip):
            self.log.warning(
                "jkp listens on %s beyond loopback WITHOUT authentication: anyone who reaches "
                "port %d can take kernels and run code. Set JKP_AUTH_TOKEN.",
                self.ip or "all interfaces",
                self.port,
            )

    async def stop_services(self) -> None:
        """Stop gracefully: refuse new connections and pops, let pops in flight finish (up to
        shutdown_timeout), stop the background work. The pool stays in Redis for the next start.
        """
        if self.http_server is not None:
            self.http_server.stop()
        await self.pool_registry.close(self.shutdown_timeout)
        if self.http_server is not None:
            await self.http_server.close_all_connections()
        await self.pool_registry.stop()
        await self.bridges.stop()
        self.gateway.close()
        await self.store.close()

    async def _serve(self) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await self.start_services()
        await stopping.wait()
        self.log.info("Stopping")
        await self.stop_services()

    def start(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        super().start()
        ensure_event_loop().run_until_complete(self._serve())


def _is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False  # "" or "0.0.0.0"-like names: all interfaces


main = launch_new_instance = JKPManagerApp.launch_instance


if __name__ == "__main__":
    sys.exit(main())

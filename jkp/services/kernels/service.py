"""KernelService: Enterprise Gateway's kernels API as jkp serves it, a drop-in gateway.

A create that a pool can serve is served warm: a pooled kernel is bound late to the request
(its ``KERNEL_ID``, working directory and env) and the client knows it by the id it asked for.
Anything else goes to EG as it came (cold.py), so jkp is never worse than EG. Requests that
name a kernel are resolved through the aliases in Redis, so any replica serves any kernel
(named.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import posixpath
import time
import uuid
from typing import Any

from redis.exceptions import RedisError
from traitlets.config import LoggingConfigurable

from jkp.services.gateway import Forwarded, GatewayClient, GatewayError
from jkp.services.kernels.cold import ColdCreates
from jkp.services.kernels.eg_api import (
    KernelRequestError,
    already_exists,
    bindable,
    is_uuid4,
    refused,
    shown_as,
)
from jkp.services.kernels.named import NamedKernels
from jkp.services.kernels.specs import KernelSpecs
from jkp.services.pool import PoolManager
from jkp.services.pool.pop import (
    KernelFailedError,
    PoolEmptyError,
    ReplicaUnregisteredError,
    SetUpError,
    SetUpPausedError,
    ShuttingDownError,
    UserDirectoryError,
)
from jkp.services.pool.registry import PoolRegistry
from jkp.services.store import AliasTaken
from jkp.services.store.aliases import AliasStore
from jkp.services.store.user_kernels import UserLimitReached
from jkp.traits import EnvBool, EnvFloat, EnvInt, EnvList

# What shapes a kernel's pod and cannot change once it runs (EG's Kubernetes launcher reads them).
START_ONLY_ENV = [
    "KERNEL_IMAGE",
    "KERNEL_NAMESPACE",
    "KERNEL_VOLUMES",
    "KERNEL_VOLUME_MOUNTS",
    "KERNEL_UID",
    "KERNEL_GID",
    "KERNEL_CPUS",
    "KERNEL_CPUS_LIMIT",
    "KERNEL_MEMORY",
    "KERNEL_MEMORY_LIMIT",
    "KERNEL_GPUS",
    "KERNEL_GPUS_LIMIT",
    "KERNEL_SERVICE_ACCOUNT_NAME",
    "KERNEL_POD_NAME",
    "KERNEL_EXTRA_SPARK_OPTS",
]


@dataclasses.dataclass(frozen=True)
class WarmCreate:
    """A create a pool can serve warm, and what binds the kernel to it."""

    pool: PoolManager
    alias: str  # the client's KERNEL_ID; "" when it named none
    user_name: str
    working_dir: str | None
    env: dict[str, str]


class KernelService(LoggingConfigurable):
    """EG's kernels API on jkp: warm creates from the pools, the rest passed through to EG."""

    client_envs = EnvList(
        [],
        env="JKP_CLIENT_ENVS",
        help="Env variables besides KERNEL_* that a create may set in the kernel, as EG's "
        "client_envs (EG_CLIENT_ENVS): '*' alone lets every variable through; comma-separated "
        "in the environment",
    ).tag(config=True)

    start_only_env = EnvList(
        START_ONLY_ENV,
        env="JKP_START_ONLY_ENV",
        help="Env variables that shape a kernel's pod and cannot change after it started: a "
        "create that sets one to another value than its pool's is started cold by EG",
    ).tag(config=True)

    unauthorized_users = EnvList(
        ["root"],
        env="JKP_UNAUTHORIZED_USERS",
        help="Users (KERNEL_USERNAME) refused a kernel, as EG's unauthorized_users "
        "(EG_UNAUTHORIZED_USERS): a warm create for one answers 403; comma-separated",
    ).tag(config=True)

    authorized_users = EnvList(
        [],
        env="JKP_AUTHORIZED_USERS",
        help="When not empty, the only users (KERNEL_USERNAME) given a kernel, as EG's "
        "authorized_users (EG_AUTHORIZED_USERS); comma-separated",
    ).tag(config=True)

    max_kernels_per_user = EnvInt(
        -1,
        env="JKP_MAX_KERNELS_PER_USER",
        help="Kernels a user may hold at once across replicas, as EG's max_kernels_per_user "
        "(EG_MAX_KERNELS_PER_USER): one more pop (its userId) or create (its KERNEL_USERNAME, "
        "else the pool's kernel_user_name), warm or cold, is refused with EG's 403; the "
        "pools' idle kernels never count; -1: no limit",
        min=-1,
    ).tag(config=True)

    impersonation = EnvBool(
        False,
        env="JKP_IMPERSONATION_ENABLED",
        help="Set as EG's EG_IMPERSONATION_ENABLED: then kernels run as KERNEL_USERNAME, so a "
        "create for another user than its pool's kernel_user_name is started cold by EG",
    ).tag(config=True)

    gateway_pool_wait = EnvFloat(
        0.5,
        env="JKP_GATEWAY_POOL_WAIT",
        help="Seconds a create waits for a kernel of an empty pool before EG starts it cold",
        min=0,
    ).tag(config=True)

    def __init__(
        self, pools: PoolRegistry, gateway: GatewayClient, aliases: AliasStore, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.pools = pools
        self.gateway = gateway
        self.aliases = aliases
        self._specs = KernelSpecs(gateway, self.log)

    @functools.cached_property
    def _named(self) -> NamedKernels:
        # Built on first use, once the options were read and checked.
        return NamedKernels(
            self.pools, self.gateway, self.aliases, self.max_kernels_per_user, self.log
        )

    @functools.cached_property
    def _cold(self) -> ColdCreates:
        # Built on first use, once the options were read and checked.
        return ColdCreates(
            self.pools, self.gateway, self.aliases, self.max_kernels_per_user, self.log
        )

    # -- create ---------------------------------------------------------------------------

    async def create(
        self,
        body: bytes,
        client_gone: asyncio.Event | None = None,
        timings: dict[str, float] | None = None,
    ) -> Forwarded:
        """``POST /api/kernels``: a pooled kernel bound to the request when a pool can serve
        it, else EG's own answer to the request as it came. A warm create's steps are added
        to ``timings`` (seconds by step, as a pop's).

        KernelRequestError 403 when the user is refused (as EG would), 409 when the requested
        kernel id exists; PopAbandonedError when the client left.
        """
        started = time.monotonic()
        plan = await self._plan(body)
        if isinstance(plan, str):
            self.log.info("Create started cold by EG: %s", plan)
            return await self._cold.create(body, await self._cold_user(body))
        if not plan.alias:
            model = await self._bind(plan, client_gone, timings)
        else:
            create_id = uuid.uuid4().hex
            # EG may have a kernel of that id that jkp never bound (one it started cold). It is
            # asked during the bind: asked before, it would add a round trip to EG (~2.5 ms, a
            # new connection each) to every create with an id. And only once a kernel is
            # claimed, its set-up about to be sent: EG, one thread, then relays the set-up
            # before it answers the question (asked at once, ~2 ms slower set-ups here).
            claimed = asyncio.Event()
            on_eg = asyncio.ensure_future(
                self._exists_on_eg(plan.alias, plan.pool.kernel_request_timeout, claimed)
            )
            model = None
            try:
                # The claim reserves the id for this create, or finds it taken (AliasTaken).
                model = await self._bind(plan, client_gone, timings, claimed, create_id)
                # Nothing bound: the create goes to EG as it came, and EG answers for its ids.
                exists = model is not None and await on_eg
            except AliasTaken:
                raise already_exists(plan.alias) from None
            finally:
                on_eg.cancel()  # when it was not awaited: it is done otherwise
                # A bind's hand-over wrote the binding over the reservation (and taking the
                # kernel back drops it): only a create that bound nothing gives the id back.
                if model is None:
                    await self._cold.drop_reservation(plan.alias, create_id)
            if exists:
                if model is not None:
                    await plan.pool.take_back(model["id"], "its client's id exists on EG")
                raise already_exists(plan.alias)
        if model is None:
            answer = await self._cold.create(body, plan.user_name)
            if answer.status == 201:
                served_cold = plan.pool.metrics.time_to_kernel.labels("cold")
                served_cold.observe(time.monotonic() - started)
            return answer
        kernel_id = plan.alias or model["id"]
        self.log.info("Create served warm: kernel %s as %s", model["id"], kernel_id)
        model = shown_as(model, kernel_id)
        headers = {"Content-Type": "application/json", "Location": f"/api/kernels/{kernel_id}"}
        return Forwarded(201, headers, json.dumps(model).encode())

    async def _plan(self, body: bytes) -> WarmCreate | str:
        """How a create can be served warm, or why it cannot (it then goes to EG as it came).
        KernelRequestError 403 when its user is refused."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return "its body is not JSON"
        if not isinstance(request, dict):
            return "its body is not a JSON object"
        env = request.get("env", {})
        if not isinstance(env, dict) or not all(bindable(n, v) for n, v in env.items()):
            return "its env is not a dict of strings a kernel's os.environ can hold"
        name = request["name"] if "name" in request else await self._specs.default_name()
        if not isinstance(name, str) or name not in self.pools.pools:
            return f"no pool serves kernel spec {name!r}"
        pool = self.pools.pools[name]
        user = env.get("KERNEL_USERNAME", pool.kernel_user_name)
        await self._authorize(user, name)
        if self.impersonation and user != pool.kernel_user_name:
            return f"impersonation is on and user {user!r} is not the pool's"
        variable = self._changed_start_only(pool, env)
        if variable is not None:
            return f"it sets {variable} to a value the pool's kernels were not started with"
        alias = env.get("KERNEL_ID", "")
        if alias and not is_uuid4(alias):
            return "its KERNEL_ID is not a UUID4 as EG writes them"
        target = env.get("KERNEL_WORKING_DIR") or request.get("path") or None
        if target is not None:
            # A path the set-up cannot carry (a lone surrogate: EG drops the websocket of a
            # message it cannot encode) is EG's to answer, like any it would refuse.
            if not bindable("path", target):
                return "its path is not a string a kernel's set-up can carry"
            share = posixpath.normpath(pool.working_dir)
            target = posixpath.normpath(posixpath.join(share, target))
            if posixpath.commonpath([target, share]) != share:
                return f"its working directory {target!r} is not in {share!r}"
        passed = {n: v for n, v in env.items() if self._passed(n)}
        return WarmCreate(pool, alias, user, target, passed)

    def _passed(self, name: str) -> bool:
        """Whether a client's env variable reaches the kernel, as EG decides it: KERNEL_*,
        those in client_envs, and all when client_envs is exactly ``["*"]``."""
        return name.startswith("KERNEL_") or self.client_envs == ["*"] or name in self.client_envs

    async def _authorize(self, user: str, kernel_name: str) -> None:
        """EG's authorization of a create's user, with EG's reason text."""
        if user in self.unauthorized_users:
            clause = "not authorized"
        elif self.authorized_users and user not in self.authorized_users:
            clause = "not in the set of users authorized"
        else:
            return
        display_name = (await self._specs.spec(kernel_name)).get("display_name")
        kernel = f" '{display_name}'." if display_name else "s."
        raise KernelRequestError(
            403,
            f"User '{user}' is {clause} to start kernel{kernel} Ensure KERNEL_USERNAME is "
            "set to an appropriate value and retry the request.",
            "Forbidden",
        )

    async def _exists_on_eg(self, kernel_id: str, timeout: float, after: asyncio.Event) -> bool:
        """Whether EG answers that it has a kernel of this id, asked once ``after`` is set;
        when EG cannot say, False (a kernel jkp binds to the id would then stand)."""
        await after.wait()
        try:
            return await self.gateway.get_kernel(kernel_id, timeout) is not None
        except GatewayError as e:
            self.log.warning("Cannot ask EG whether a kernel id is in use: %s", e)
            return False

    async def _bind(
        self,
        plan: WarmCreate,
        client_gone: asyncio.Event | None,
        timings: dict[str, float] | None = None,
        claimed: asyncio.Event | None = None,
        create_id: str = "",
    ) -> dict[str, Any] | None:
        """A pooled kernel bound to the create; None when the pool cannot serve it now.
        ``claimed``, ``create_id`` and AliasTaken: see HandingOut.bind."""
        binding = {
            "pool": plan.pool.kernel_name,
            "working_dir": plan.working_dir,
            "env": plan.env,
        }
        try:
            return await plan.pool.bind(
                user_name=plan.user_name,
                working_dir=plan.working_dir,
                env=plan.env,
                alias=plan.alias,
                binding=binding,
                claim_wait=self.gateway_pool_wait,
                client_gone=client_gone,
                timings=timings,
                claimed=claimed,
                create_id=create_id,
                user_limit=self.max_kernels_per_user,
            )
        except UserLimitReached as e:
            raise refused(e) from None
        except (
            PoolEmptyError,
            SetUpPausedError,
            ReplicaUnregisteredError,
            ShuttingDownError,
            UserDirectoryError,
            SetUpError,
            KernelFailedError,
            GatewayError,
            RedisError,
        ) as e:
            self.log.info("Create not served warm (%s): %s", type(e).__name__, e)
            return None

    async def _cold_user(self, body: bytes) -> str:
        """Whom a create going to EG as it came counts for: its KERNEL_USERNAME, else the
        kernel_user_name of the pool of its spec (or of the default pool)."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return self.pools.default.kernel_user_name
        env = request.get("env")
        if isinstance(env, dict) and isinstance(env.get("KERNEL_USERNAME"), str):
            return env["KERNEL_USERNAME"]
        name = request.get("name") or await self._specs.default_name()
        pool = self.pools.pools.get(name) if isinstance(name, str) else None
        return (pool or self.pools.default).kernel_user_name

    # -- requests that name a kernel ------------------------------------------------------

    async def forward(
        self,
        method: str,
        kernel_id: str,
        action: str = "",
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """A request for kernel ``kernel_id`` passed to EG: see NamedKernels.forward."""
        return await self._named.forward(method, kernel_id, action, query, body, headers)

    async def binding(self, kernel_id: str) -> dict[str, Any] | None:
        """The binding of a client's kernel id: see NamedKernels.binding."""
        return await self._named.binding(kernel_id)

    async def upstream_id(self, kernel_id: str) -> str:
        """The id EG knows the client's kernel ``kernel_id`` by: see NamedKernels.upstream_id."""
        return await self._named.upstream_id(kernel_id)

    async def list_kernels(self, query: str = "") -> Forwarded:
        """EG's kernel list as clients see it: see NamedKernels.list_kernels."""
        return await self._named.list_kernels(query)

    # -- the pop API's env ----------------------------------------------------------------

    def pop_env(self, pool: PoolManager, env: Any) -> dict[str, str]:
        """A pop's ``env``, checked by the rules of a warm create; ValueError saying why not.

        A pop cannot fall back to a cold start, so what a create would send to EG is refused.
        """
        if not isinstance(env, dict) or not all(bindable(n, v) for n, v in env.items()):
            raise ValueError("env must be an object of strings an environment can hold")
        for name in env:
            if not self._passed(name):
                raise ValueError(f"env {name!r} is neither KERNEL_* nor in client_envs")
        variable = self._changed_start_only(pool, env)
        if variable is not None:
            raise ValueError(f"env {variable!r} cannot change on a started kernel")
        return dict(env)

    def _changed_start_only(self, pool: PoolManager, env: dict[str, str]) -> str | None:
        """The first start-only variable ``env`` sets to another value than the pool's
        kernels were started with; None when there is none."""
        pool_env = pool.kernel_start_env("")
        for variable in self.start_only_env:
            if variable in env and env[variable] != pool_env.get(variable):
                return variable
        return None

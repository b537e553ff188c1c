"""KernelService: Enterprise Gateway's kernels API as jkp serves it, a drop-in gateway.

A create that a pool can serve is served warm: a pooled kernel is bound late to the request
(its ``KERNEL_ID``, working directory and env) and the client knows it by the id it asked for.
Anything else goes to EG as it came, so jkp is never worse than EG. Requests that name a kernel
are resolved through the aliases in Redis, so any replica serves any kernel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import posixpath
import time
import uuid
from typing import Any
from urllib.parse import quote

from redis.exceptions import RedisError
from traitlets.config import LoggingConfigurable

from jkp.errors import ApiError
from jkp.services.aliases import AliasStore, UnhandedKernel
from jkp.services.gateway import Forwarded, GatewayClient, GatewayError
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
from jkp.services.user_kernels import UserLimitReached
from jkp.traits import EnvBool, EnvFloat, EnvInt, EnvList
from jkp.user import set_up_code

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
# EG's text when a kernel id is taken; pybox looks for it to reuse the kernel.
ALREADY_EXISTS = "Kernel already exists: {}"
# EG's text for a kernel it does not have (404).
DOES_NOT_EXIST = "Kernel does not exist: {}"
_EG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# EG refuses longer KERNEL_* values with 400.
_MAX_ENV_VALUE = 4096
# How long a bound kernel may take to be bound again after a restart.
_REBIND_TIMEOUT = 30.0
# Added to EG's request timeout: how long a cold create's slot waits for EG's answer.
_COLD_SLOT_MARGIN = 5.0


class KernelRequestError(ApiError):
    """A kernels API request jkp answers itself with an error: status, message, reason."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status_code = status
        self.reason = reason


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
        self._kernel_specs: dict[str, Any] | None = None

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
            return await self._create_cold(body, await self._cold_user(body))
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
                raise _already_exists(plan.alias) from None
            finally:
                on_eg.cancel()  # when it was not awaited: it is done otherwise
                # A bind's hand-over wrote the binding over the reservation (and taking the
                # kernel back drops it): only a create that bound nothing gives the id back.
                if model is None:
                    await self._drop_reservation(plan.alias, create_id)
            if exists:
                if model is not None:
                    await plan.pool.take_back(model["id"], "its client's id exists on EG")
                raise _already_exists(plan.alias)
        if model is None:
            answer = await self._create_cold(body, plan.user_name)
            if answer.status == 201:
                served_cold = plan.pool.metrics.time_to_kernel.labels("cold")
                served_cold.observe(time.monotonic() - started)
            return answer
        kernel_id = plan.alias or model["id"]
        self.log.info("Create served warm: kernel %s as %s", model["id"], kernel_id)
        model = _shown_as(model, kernel_id)
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
        if not isinstance(env, dict) or not all(_bindable(n, v) for n, v in env.items()):
            return "its env is not a dict of strings a kernel's os.environ can hold"
        name = request["name"] if "name" in request else await self._default_kernel_name()
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
        if alias and not _is_uuid4(alias):
            return "its KERNEL_ID is not a UUID4 as EG writes them"
        target = env.get("KERNEL_WORKING_DIR") or request.get("path") or None
        if target is not None:
            # A path the set-up cannot carry (a lone surrogate: EG drops the websocket of a
            # message it cannot encode) is EG's to answer, like any it would refuse.
            if not _bindable("path", target):
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
        display_name = (await self._spec(kernel_name)).get("display_name")
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

    async def _drop_reservation(self, alias: str, create_id: str) -> None:
        """Give the client's id back unless the create bound it (its reservation would
        otherwise hold it for the claim lease)."""
        try:
            await self.aliases.drop_reservation(alias, create_id)
        except RedisError as e:
            self.log.warning("Reservation of kernel id %s left to expire: %s", alias, e)

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
            raise _refused(e) from None
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

    async def _create_cold(self, body: bytes, user: str) -> Forwarded:
        """EG's answer to the create as it came, unless it asks for an id a warm kernel has
        or ``user`` holds max_kernels_per_user kernels (KernelRequestError 403)."""
        try:
            env = json.loads(body or b"{}").get("env") or {}
            alias = env.get("KERNEL_ID") if isinstance(env, dict) else None
        except (ValueError, AttributeError):
            alias = None
        create_id = ""
        if isinstance(alias, str) and alias:
            # Reserved, as a warm create's claim reserves it, until EG answered: then EG has
            # the id and a warm create's question to EG finds it. Checked and forwarded
            # instead, a warm create of the id could bind a kernel while EG starts this one.
            create_id = uuid.uuid4().hex
            try:
                reserved = await self.aliases.reserve(
                    alias, create_id, self.gateway.request_timeout
                )
            except RedisError:
                reserved = True  # EG still refuses ids it has
            if not reserved:
                raise _already_exists(alias)
        try:
            return await self._forward_counted(body, user)
        finally:
            if create_id:
                await self._drop_reservation(alias, create_id)

    async def _forward_counted(self, body: bytes, user: str) -> Forwarded:
        """EG's answer to a cold create, its kernel counted against ``user`` when
        max_kernels_per_user is set (KernelRequestError 403 at the limit)."""
        if self.max_kernels_per_user < 0:
            return await self._forward_create(body)
        # A cold kernel counts against its user from before EG is asked (so two replicas
        # cannot both let the user past the limit) until it is deleted through jkp or found
        # gone from EG by the handed-out check (EG's culler, a DELETE straight to EG).
        slots = self.pools.default.store.user_kernels
        token = f"create:{uuid.uuid4().hex}"
        lease = self.gateway.request_timeout + _COLD_SLOT_MARGIN
        try:
            await slots.take_cold(user, token, self.max_kernels_per_user, lease)
        except UserLimitReached as e:
            raise _refused(e) from None
        answer = None
        try:
            answer = await self._forward_create(body)
        finally:
            await self._settle_cold_slot(user, token, answer)
        return answer

    async def _forward_create(self, body: bytes) -> Forwarded:
        return await self.gateway.forward(
            "POST",
            "/api/kernels",
            body=_with_env(body),
            headers={"Content-Type": "application/json"},
        )

    async def _settle_cold_slot(self, user: str, token: str, answer: Forwarded | None) -> None:
        """The cold create's slot becomes its kernel's, or is given back when EG started none.
        When Redis fails now the slot runs out with its lease: the kernel is not counted."""
        model = answer.json() if answer is not None and answer.status == 201 else None
        slots = self.pools.default.store.user_kernels
        try:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                await slots.confirm_cold(user, token, model["id"])
            else:
                await slots.release(user, token)
        except RedisError as e:
            self.log.warning("Slot of a cold create for %s left to run out: %s", user, e)

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
        name = request.get("name") or await self._default_kernel_name()
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
        """A request for kernel ``kernel_id`` (``action``: "", "interrupt", "restart") passed
        to EG for the kernel it names; models in the answer show the client's id.

        A kernel EG no longer has, or that the client deleted, is forgotten; a restarted one
        is bound again (directory and env) before the answer.
        """
        binding = await self.binding(kernel_id)
        upstream = binding["kernel_id"] if binding else kernel_id
        path = f"/api/kernels/{quote(upstream)}" + (f"/{action}" if action else "")
        answer = await self.gateway.forward(method, path, query, body, headers)
        if binding is None:
            if answer.status == 404 or (method == "DELETE" and answer.status < 300):
                await self._forget_unbound(kernel_id)
            return answer
        if answer.status == 404 or (method == "DELETE" and answer.status < 300):
            await self._forget(kernel_id, binding)
        elif action == "restart" and answer.status < 300:
            await self._rebind(binding)
        model = answer.json()
        if not isinstance(model, dict) or model.get("id") != upstream:
            return answer
        return dataclasses.replace(answer, body=json.dumps(_shown_as(model, kernel_id)).encode())

    async def binding(self, kernel_id: str) -> dict[str, Any] | None:
        """The binding of a client's kernel id; None for ids EG knows as they are (and when
        Redis cannot tell: a cold kernel still works then).

        KernelRequestError 404, as EG answers for a kernel it does not have, when the id is a
        pool's kernel not handed out (any replica's pool): no client may reach it.
        """
        try:
            return await self.aliases.binding(kernel_id)
        except UnhandedKernel:
            raise KernelRequestError(404, DOES_NOT_EXIST.format(kernel_id), "Not Found") from None
        except RedisError as e:
            self.log.warning(
                "Cannot resolve kernel %s in Redis (%s); passed as it is", kernel_id, e
            )
            return None

    async def upstream_id(self, kernel_id: str) -> str:
        """The id EG knows the client's kernel ``kernel_id`` by; KernelRequestError: see
        binding."""
        binding = await self.binding(kernel_id)
        return binding["kernel_id"] if binding else kernel_id

    async def _forget(self, alias: str, binding: dict[str, Any]) -> None:
        """Forget a bound kernel that is gone: its hand-out and its alias."""
        pool = self.pools.pools.get(binding.get("pool", ""))
        try:
            if pool is not None:
                await pool.store.forget_handed([binding["kernel_id"]])
            await self.aliases.forget(alias, binding["kernel_id"])
        except RedisError as e:
            self.log.warning("Could not forget kernel %s in Redis: %s", alias, e)

    async def _forget_unbound(self, kernel_id: str) -> None:
        """Give back the slot of a kernel that is gone, known to EG by its own id: a cold one,
        or one a pop handed out. Without max_kernels_per_user nothing is counted."""
        if self.max_kernels_per_user < 0:
            return
        try:
            await self.pools.default.store.user_kernels.forget_cold([kernel_id])
            for pool in self.pools.pools.values():
                await pool.store.forget_handed([kernel_id])
        except RedisError as e:
            self.log.warning("Could not forget kernel %s in Redis: %s", kernel_id, e)

    async def _rebind(self, binding: dict[str, Any]) -> None:
        """Bind a restarted kernel again: a restart starts its process afresh, in the pool's
        directory and env. KernelRequestError when it cannot be."""
        pool = self.pools.pools.get(binding.get("pool", ""))
        if pool is None:
            return
        code = set_up_code(pool.working_dir, binding.get("working_dir"), env=binding.get("env"))
        try:
            await self.gateway.execute(binding["kernel_id"], code, _REBIND_TIMEOUT)
        except GatewayError as e:
            raise KernelRequestError(
                502,
                f"The kernel restarted, but its directory and env could not be set again: {e}",
                "Rebind failed",
            ) from e

    async def list_kernels(self, query: str = "") -> Forwarded:
        """EG's kernel list without the pools' own kernels (idle, starting, being handed
        out, retiring; of any replica's pools), each shown by the id its client knows it by."""
        answer = await self.gateway.forward("GET", "/api/kernels", query)
        models = answer.json()
        if answer.status != 200 or not isinstance(models, list):
            return answer
        try:
            hidden = await self.aliases.unhanded_ids()
            shown = await self.aliases.aliases_by_kernel()
        except RedisError as e:
            raise KernelRequestError(503, f"Redis unavailable: {e}", "Store unavailable") from e
        listed = [
            _shown_as(m, shown.get(m.get("id"), m.get("id")))
            for m in models
            if isinstance(m, dict) and m.get("id") not in hidden
        ]
        return dataclasses.replace(answer, body=json.dumps(listed).encode())

    # -- the pop API's env ----------------------------------------------------------------

    def pop_env(self, pool: PoolManager, env: Any) -> dict[str, str]:
        """A pop's ``env``, checked by the rules of a warm create; ValueError saying why not.

        A pop cannot fall back to a cold start, so what a create would send to EG is refused.
        """
        if not isinstance(env, dict) or not all(_bindable(n, v) for n, v in env.items()):
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

    # -- kernel specs ---------------------------------------------------------------------

    async def _default_kernel_name(self) -> str | None:
        """EG's default kernel spec (a create without ``name`` gets it)."""
        return (await self._specs()).get("default")

    async def _spec(self, name: str) -> dict[str, Any]:
        """Kernel spec ``name`` as EG describes it; {} when unknown."""
        spec = (await self._specs()).get("kernelspecs", {}).get(name) or {}
        return spec.get("spec") or {}

    async def _specs(self) -> dict[str, Any]:
        """EG's kernel specs, asked once; {} while EG cannot say."""
        if self._kernel_specs is None:
            try:
                self._kernel_specs = await self.gateway.kernel_spec_models()
            except GatewayError as e:
                self.log.warning("Cannot read EG's kernel specs now: %s", e)
                return {}
        return self._kernel_specs


def _with_env(body: bytes) -> bytes:
    """A create's body with an ``env``, empty when it had none. EG 3.3 answers a create
    without env that overlaps another create (jkp's refills) with a 500 naming the other's
    kernel ("Kernel already exists"), which pybox would take for its own id."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return body
    if not isinstance(request, dict) or "env" in request:
        return body
    return json.dumps({**request, "env": {}}).encode()


def _already_exists(kernel_id: str) -> KernelRequestError:
    return KernelRequestError(409, ALREADY_EXISTS.format(kernel_id), "Conflict")


def _refused(error: UserLimitReached) -> KernelRequestError:
    """EG's answer to a create past max_kernels_per_user: 403 with its text."""
    return KernelRequestError(403, str(error), "Forbidden")


def _bindable(name: Any, value: Any) -> bool:
    """Whether ``name=value`` can be set in a kernel's os.environ as it is."""
    if not isinstance(name, str) or not isinstance(value, str) or not name:
        return False
    if "=" in name or "\x00" in name or "\x00" in value or len(value) > _MAX_ENV_VALUE:
        return False  # os.environ cannot hold it, or EG refuses it (400)
    try:
        name.encode()
        value.encode()
    except UnicodeEncodeError:
        return False  # a lone surrogate
    return True


def _is_uuid4(value: str) -> bool:
    """Whether ``value`` is a version 4 UUID, written as EG writes kernel ids."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


def _shown_as(model: dict[str, Any], kernel_id: str) -> dict[str, Any]:
    """A kernel model as its client sees it: its id, and last_activity in EG's format."""
    model = {**model, "id": kernel_id}
    activity = model.get("last_activity")
    if isinstance(activity, str):
        try:
            when = datetime.datetime.fromisoformat(activity.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is not None:
                when = when.astimezone(datetime.timezone.utc)
            model["last_activity"] = when.strftime(_EG_TIME_FORMAT)
    return model

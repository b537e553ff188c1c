"""RedisStore: jkp's connection to Redis (a URL, host and port, or sentinels) and the stores
of the pools kept in it."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.exceptions import ReadOnlyError
from traitlets import Any as AnyTrait
from traitlets import Dict, TraitError, default, validate
from traitlets.config import LoggingConfigurable

from jkp.services.store import redis_connection
from jkp.services.store.aliases import AliasStore
from jkp.services.store.pool_keys import PoolKeys
from jkp.services.store.pool_store import PoolStore
from jkp.services.store.redis_connection import as_text
from jkp.traits import EnvInt, EnvList, EnvUnicode, check_options


class RedisStore(LoggingConfigurable):
    """The Redis connection of jkp and the pools stored in it."""

    redis_url = EnvUnicode(
        "",
        env="JKP_REDIS_URL",
        help=(
            "Redis URL, e.g. rediss://:password@host:6380/0; when set it overrides "
            "redis_host, redis_port and redis_db"
        ),
    ).tag(config=True)

    redis_host = EnvUnicode("127.0.0.1", env="JKP_REDIS_HOST", help="Redis host").tag(config=True)

    redis_port = EnvInt(6379, env="JKP_REDIS_PORT", help="Redis port", min=1, max=65535).tag(
        config=True
    )

    redis_db = EnvInt(0, env="JKP_REDIS_DB", help="Redis database number", min=0).tag(config=True)

    redis_password = EnvUnicode(
        "",
        env="JKP_REDIS_PASSWORD",
        help="Password of the Redis server (the master, with sentinels); a URL's own wins",
    ).tag(config=True)

    redis_sentinels = EnvList(
        [],
        env="JKP_REDIS_SENTINELS",
        help=(
            "Redis Sentinel addresses, host:port,host:port,...; when set, jkp uses the master "
            "they name redis_sentinel_master, following its failovers, instead of redis_url "
            "or redis_host and redis_port"
        ),
    ).tag(config=True)

    redis_sentinel_master = EnvUnicode(
        "mymaster",
        env="JKP_REDIS_SENTINEL_MASTER",
        help="The name the sentinels monitor the master under (sentinel monitor <name> ...)",
    ).tag(config=True)

    redis_sentinel_password = EnvUnicode(
        "",
        env="JKP_REDIS_SENTINEL_PASSWORD",
        help="Password of the sentinels themselves (their requirepass); empty: none",
    ).tag(config=True)

    key = EnvUnicode(
        "tablegpt-test:kernels:idle",
        env="JKP_REDIS_KEY",
        help="Redis key of the idle-kernel list; the pool's other keys are derived from it",
    ).tag(config=True)

    client_kwargs = Dict(
        help="Extra keyword arguments for redis.asyncio.Redis (e.g. ssl_ca_certs)"
    ).tag(config=True)

    sentinel = AnyTrait(
        None, allow_none=True, help="The Sentinel client, when redis_sentinels are set"
    )

    client = AnyTrait(help="The redis.asyncio.Redis client; built from the traits above")

    @validate("redis_sentinels")
    def _check_sentinels(self, proposal: Any) -> list[str]:
        # "a:1,b:2" as one value (the command line's) is two addresses, as in the env var.
        addresses = [a.strip() for a in ",".join(proposal.value).split(",") if a.strip()]
        for address in addresses:
            try:
                redis_connection.parse_address(address)
            except ValueError as e:
                raise TraitError(str(e)) from None
        return addresses

    @default("sentinel")
    def _sentinel_default(self) -> redis_connection.Sentinel | None:
        if not self.redis_sentinels:
            return None
        return redis_connection.sentinel(self.redis_sentinels, self.redis_sentinel_password)

    @default("client")
    def _client_default(self) -> redis.Redis:
        # Built before the app checks the options: a bad one must be named, not a traceback.
        check_options(self)
        kwargs = redis_connection.fail_fast_options()
        if self.redis_password:
            kwargs["password"] = self.redis_password
        kwargs.update(self.client_kwargs)
        if self.sentinel is not None:
            return self.sentinel.master_for(self.redis_sentinel_master, db=self.redis_db, **kwargs)
        if self.redis_url:
            return redis.Redis.from_url(self.redis_url, **kwargs)
        return redis.Redis(host=self.redis_host, port=self.redis_port, db=self.redis_db, **kwargs)

    async def ping(self) -> None:
        """Raise RedisError unless Redis answers, and with sentinels, unless it is the master
        (a connection kept from before a failover may reach the demoted one)."""
        if self.sentinel is None:
            await self.client.ping()
            return
        for _ in range(2):
            role = as_text((await self.client.execute_command("ROLE"))[0])
            if role == "master":
                return
            # Idle connections to it are dropped: the next one asks the sentinels again.
            await self.client.connection_pool.disconnect(inuse_connections=False)
        raise ReadOnlyError(f"the Redis the sentinels named master is a {role} now")

    def pool(self, key: str | None = None) -> PoolStore:
        """The store of the pool whose idle list is at ``key`` (default: the ``key`` trait)."""
        keys = PoolKeys(
            key or self.key, self.aliases_key, self.pools_key, self.users_key, shared=self.key
        )
        return PoolStore(self.client, keys)

    @property
    def users_key(self) -> str:
        """The hash of the kernels each user holds, shared by all pools."""
        return f"{self.key}:users"

    @property
    def aliases_key(self) -> str:
        """The hash of the gateway's kernel aliases, shared by all pools."""
        return f"{self.key}:aliases"

    @property
    def pools_key(self) -> str:
        """The hash where every replica's pools register the keys of their unhanded kernels."""
        return f"{self.key}:pools"

    @property
    def bridges_channel(self) -> str:
        """The channel where replicas announce the kernel websockets they bridge."""
        return f"{self.key}:bridges"

    def aliases(self) -> AliasStore:
        """The store of the gateway's kernel aliases."""
        return AliasStore(self.client, self.aliases_key, self.pools_key)

    async def close(self) -> None:
        """Close the connections to Redis (and to the sentinels)."""
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()

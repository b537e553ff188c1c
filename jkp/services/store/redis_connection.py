"""How jkp reaches Redis: one server, or the master that Redis Sentinel names.

With sentinels, every connection asks them for the master's address when it is made, and a
connection that finds its server demoted (READONLY) or gone is dropped and made again: the
client, the Lua scripts (redis-py loads a script again where EVALSHA answers NOSCRIPT, as a
promoted replica's script cache is empty) and the bridges' pub/sub all follow a failover.
While Sentinel names no master, each call fails at once with MasterNotFoundError (a
ConnectionError), which jkp answers like any Redis outage: 503, and its loops back off.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

# Seconds a connection to Redis (or a sentinel) may take to open, and a call to answer.
SOCKET_TIMEOUT = 0.8


def fail_fast_options() -> dict[str, Any]:
    """Keyword arguments of a redis-py client that fails fast, instead of redis-py's default
    retries (up to ~14 s against a dead server): a pop answers 503 within 2 s and the loops
    back off themselves."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        # One retry replaces a connection that died with a restarted (or demoted) Redis.
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=1),
        "health_check_interval": 30,
    }


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6-address]:port`` for IPv6) as (host, port); ValueError if not."""
    host, sep, port = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def sentinel(addresses: list[str], password: str = "") -> Sentinel:
    """A client of the sentinels at ``addresses`` (``host:port`` each), failing as fast as
    the Redis client; each is asked in turn until one names the master."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
    }
    if password:
        options["password"] = password
    return Sentinel([parse_address(a) for a in addresses], sentinel_kwargs=options)


def as_text(value: bytes | str) -> str:
    """A value Redis answered, as text."""
    return value.decode() if isinstance(value, bytes) else value

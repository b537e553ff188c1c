"""Replicas agree, through Redis, which websocket of a kernel's session is the newest."""

import asyncio

import pytest
import redis.asyncio as redis

from jkp.services.bridges import SessionBridges
from tests.conftest import wait_until


@pytest.fixture
async def replicas(redis_server):
    """Two replicas' SessionBridges on one Redis."""
    started = []
    for _ in range(2):
        bridges = SessionBridges(redis.Redis.from_url(redis_server.url), "test:bridges")
        await bridges.start()
        started.append(bridges)
    yield started
    for bridges in started:
        await bridges.stop()
        await bridges.client.aclose()


async def test_a_newer_bridge_on_another_replica_replaces_the_older(replicas):
    a, b = replicas
    older = await a.open("k", "s", lambda: None)
    await wait_until(lambda: older.announced, 5, "the older bridge's announcement")
    newer = await b.open("k", "s", lambda: None)
    await wait_until(lambda: older.replaced, 5, "the older bridge to be replaced")
    assert not newer.replaced


async def test_bridges_opened_at_once_on_two_replicas_leave_exactly_one(replicas):
    a, b = replicas
    for attempt in range(20):
        opened = await asyncio.gather(
            a.open("k", str(attempt), lambda: None), b.open("k", str(attempt), lambda: None)
        )
        # Only an announced bridge gives way, and only to one announced after it.
        await wait_until(
            lambda o=opened: all(x.announced for x in o) and any(x.replaced for x in o),
            5,
            "both announcements, and one bridge replaced",
        )
        assert not all(x.replaced for x in opened)


async def test_a_bridge_of_another_session_or_kernel_is_left_alone(replicas):
    a, b = replicas
    first = await a.open("k", "s", lambda: None)
    await wait_until(lambda: first.announced, 5, "the first bridge's announcement")
    others = [await b.open("k", "t", lambda: None), await b.open("j", "s", lambda: None)]
    await wait_until(lambda: all(x.announced for x in others), 5, "the others' announcements")
    assert not first.replaced

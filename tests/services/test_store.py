"""Unit tests of the pool's Redis operations on fakeredis; integration tests use a real Redis."""

import json

import fakeredis
import pytest

from jkp.services.store import PoolKeys, PoolStore


@pytest.fixture
def store():
    return PoolStore(fakeredis.FakeAsyncRedis(), PoolKeys("test:kernels:idle"))


async def pooled(store, *ids):
    for kernel_id in ids:
        assert await store.reserve_start(kernel_id, 100, 60)
        assert await store.finish_start(kernel_id, {"id": kernel_id, "name": "python_kubernetes"})


async def test_reservations_stop_at_target_counting_idle_and_starting(store):
    await pooled(store, "k1")
    assert await store.reserve_start("k2", 3, 60)
    assert await store.reserve_start("k3", 3, 60)
    assert not await store.reserve_start("k4", 3, 60)
    assert await store.counts() == {"idle": 1, "starting": 2, "claimed": 0, "handed": 0}


async def test_expired_start_lease_frees_its_place(store):
    assert await store.reserve_start("k1", 1, 0.0)
    assert await store.expired_starting_ids() == ["k1"]
    assert await store.reserve_start("k2", 1, 60)


async def test_finish_start_after_lease_was_taken_back_does_not_pool(store):
    assert await store.reserve_start("k1", 1, 60)
    assert await store.retire_starting("k1")
    assert not await store.finish_start("k1", {"id": "k1"})
    assert await store.idle_models() == []
    assert await store.retiring_ids() == ["k1"]


async def test_idle_list_is_the_original_format_new_left_pop_right(store):
    await pooled(store, "old", "new")
    raw = await store.client.lrange("test:kernels:idle", 0, -1)
    assert [json.loads(m)["id"] for m in raw] == ["new", "old"]
    claim = await store.claim("zt")
    assert claim.kernel_id == "old"
    assert claim.model == {"id": "old", "name": "python_kubernetes"}


async def test_claim_from_original_service_data(store):
    # A model pushed by the Go service, as it stored it.
    model = (
        '{"id":"go1","name":"python_kubernetes","last_activity":"2024-01-01T00:00:00Z",'
        '"execution_state":"idle","connections":0}'
    )
    await store.client.lpush("test:kernels:idle", model)
    claim = await store.claim("zt")
    assert claim.kernel_id == "go1" and claim.model_json == model


async def test_claim_on_empty_pool_is_none(store):
    assert await store.claim("zt") is None


async def test_hand_over_records_user_and_kernel_never_returns(store):
    await pooled(store, "k1")
    claim = await store.claim("zt")
    assert await store.hand_over(claim, "zt")
    handed = await store.handed_out()
    assert handed["k1"]["user_id"] == "zt"
    assert not await store.release(claim)
    assert await store.idle_models() == []


async def test_release_puts_kernel_back_at_pop_end(store):
    await pooled(store, "k1", "k2")
    claim = await store.claim("zt")
    assert claim.kernel_id == "k1"
    assert await store.release(claim)
    assert (await store.claim("zt")).kernel_id == "k1"


async def test_retire_idle_only_if_still_idle(store):
    await pooled(store, "k1")
    [model_json] = await store.idle_models()
    claim = await store.claim("zt")
    assert not await store.retire_idle("k1", model_json)
    assert await store.retiring_ids() == []
    await store.release(claim)
    assert await store.retire_idle("k1", model_json)
    assert await store.retiring_ids() == ["k1"]
    await store.forget_retired("k1")
    assert await store.retiring_ids() == []


async def test_trim_surplus_retires_newest_above_target(store):
    await pooled(store, "k1", "k2", "k3", "k4")
    assert sorted(await store.trim_surplus(2)) == ["k3", "k4"]
    assert [json.loads(m)["id"] for m in await store.idle_models()] == ["k2", "k1"]
    assert sorted(await store.retiring_ids()) == ["k3", "k4"]
    assert await store.trim_surplus(2) == []

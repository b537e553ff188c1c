"""Unit tests of the pool's Redis operations on fakeredis; integration tests use a real Redis."""

import asyncio
import json

import fakeredis
import pytest

from jkp.services.store import (
    AliasTaken,
    Claim,
    Idempotency,
    IdempotencyConflict,
    IdempotencyPending,
    PoolKeys,
    PoolStore,
    Replay,
)
from jkp.services.store.aliases import AliasStore
from jkp.services.store.user_kernels import UserLimitReached


@pytest.fixture
def store():
    keys = PoolKeys("test:kernels:idle", "test:kernels:idle:aliases", "test:kernels:idle:pools")
    return PoolStore(fakeredis.FakeAsyncRedis(), keys)


@pytest.fixture
def aliases(store):
    return AliasStore(store.client, store.keys.aliases, store.keys.pools)


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


def key(owner, k="retry-1", request="zt's pop"):
    return Idempotency(k, owner, request)


async def test_idempotent_claim_repeats_the_model_handed_out(store):
    await pooled(store, "k1", "k2")
    claim = await store.claim("zt", key("pop-a"))
    answered = {**claim.model, "execution_state": "idle"}
    assert await store.hand_over(claim, "zt", answered, ttl_seconds=60)
    repeat = await store.claim("zt", key("pop-b"))
    assert isinstance(repeat, Replay) and repeat.model == answered
    # The repeat took no kernel.
    assert [json.loads(m)["id"] for m in await store.idle_models()] == ["k2"]


async def test_idempotency_key_of_another_request_is_a_conflict(store):
    await pooled(store, "k1", "k2")
    claim = await store.claim("zt", key("pop-a"))
    with pytest.raises(IdempotencyConflict):
        await store.claim("someone-else", key("pop-b", request="someone-else's pop"))
    assert await store.hand_over(claim, "zt", claim.model, ttl_seconds=60)
    with pytest.raises(IdempotencyConflict):
        await store.claim("zt", key("pop-b", request="zt's pop with another env"))


async def test_idempotency_key_in_use_by_a_running_pop_is_pending(store):
    await pooled(store, "k1", "k2")
    first = await store.claim("zt", key("pop-a"))
    with pytest.raises(IdempotencyPending):
        await store.claim("zt", key("pop-b"))
    # The pop holding the key may claim again (its first kernel failed the set-up).
    assert await store.retire_claim(first)
    # Ending its claim gave the key up: a retry starts afresh.
    retry = await store.claim("zt", key("pop-b"))
    assert isinstance(retry, Claim) and retry.kernel_id == "k2"


async def test_released_claim_gives_its_idempotency_key_up(store):
    await pooled(store, "k1")
    claim = await store.claim("zt", key("pop-a"))
    assert await store.release(claim)
    assert (await store.claim("zt", key("pop-b"))).kernel_id == "k1"


async def test_idempotency_record_of_a_running_pop_expires_with_its_lease(store):
    await pooled(store, "k1", "k2")
    await store.claim("zt", key("pop-a"), lease_seconds=0.001)
    await asyncio.sleep(0.01)
    assert (await store.claim("zt", key("pop-b"))).kernel_id == "k2"


async def test_handed_out_kernels_are_read_a_page_at_a_time_and_forgotten(store):
    ids = [f"k{n}" for n in range(25)]
    await pooled(store, *ids)
    for _ in ids:
        claim = await store.claim("zt")
        assert await store.hand_over(claim, "zt")
    seen, cursor = [], 0
    while True:
        cursor, page = await store.handed_page(cursor, 10)
        seen += page
        if cursor == 0:
            break
    assert sorted(set(seen)) == sorted(ids)
    await store.forget_handed(ids[:20])
    assert sorted(await store.handed_out()) == sorted(ids[20:])
    assert (await store.counts())["handed"] == 5


async def test_retire_handed_takes_a_kernel_back_for_shutdown(store):
    await pooled(store, "k1")
    claim = await store.claim("zt")
    assert await store.hand_over(claim, "zt")
    assert await store.retire_handed("k1")
    assert await store.handed_out() == {}
    assert await store.retiring_ids() == ["k1"]
    assert not await store.retire_handed("k1")


async def test_starts_and_claims_of_a_replica_whose_heartbeat_ran_out_are_orphans(store):
    await store.beat("alive", 60)
    await store.beat("dead", 0.001)
    await pooled(store, "k1", "k2")
    assert await store.reserve_start("s-alive", 10, 60, "alive")
    assert await store.reserve_start("s-dead", 10, 60, "dead")
    await store.claim("zt", replica="alive")
    await store.claim("zt", replica="dead")
    await asyncio.sleep(0.01)
    assert await store.orphans() == (["s-dead"], ["k2"])
    assert await store.live_replicas() == ["alive"]
    await store.leave("alive")
    assert await store.live_replicas() == []


async def test_exactly_one_replica_takes_over_an_orphaned_start(store):
    await store.beat("dead", 0.001)
    await store.beat("a", 60)
    await store.beat("b", 60)
    assert await store.reserve_start("k1", 10, 60, "dead")
    await asyncio.sleep(0.01)
    won = await asyncio.gather(
        store.take_over_start("k1", "a", 60), store.take_over_start("k1", "b", 60)
    )
    assert sorted(won) == [False, True]
    winner = "a" if won[0] else "b"
    # Only the winner pools it; the dead replica, back, must leave it alone.
    assert await store.finish_start("k1", {"id": "k1"}, "dead") == -1
    assert await store.finish_start("k1", {"id": "k1"}, winner) == 1
    assert await store.orphans() == ([], [])


async def test_a_deferred_start_frees_its_place_and_stays_recorded_until_its_time_is_out(
    store, aliases
):
    assert await store.reserve_start("k1", 1, 60, "a")
    assert not await store.defer_start("k1", "b", 60)  # only its owner defers it
    assert await store.defer_start("k1", "a", 60)
    assert await store.reserve_start("k2", 1, 60, "b")
    assert await store.late_ids() == ["k1"]
    assert "k1" in await aliases.unhanded_ids()  # no client is shown it, should it appear
    assert not await store.forget_late("k1")
    assert await store.reserve_start("k3", 2, 60, "a")
    assert await store.defer_start("k3", "a", 0.001)
    await asyncio.sleep(0.01)
    assert await store.forget_late("k3")
    assert await store.late_ids() == ["k1"]


async def test_a_late_kernel_is_started_again_while_the_pool_has_room_else_retired(store):
    for kernel_id in ("k1", "k2"):
        assert await store.reserve_start(kernel_id, 2, 60, "dead")
        assert await store.defer_start(kernel_id, "dead", 60)
    taken = await asyncio.gather(
        store.adopt_late("k1", 1, 60, "a"), store.adopt_late("k1", 1, 60, "b")
    )
    assert sorted(taken) == [0, 1]  # exactly one replica takes it
    winner = "a" if taken[0] else "b"
    assert await store.finish_start("k1", {"id": "k1"}, winner) == 1
    # The pool is full now: the other late kernel is retired, not pooled.
    assert await store.adopt_late("k2", 1, 60, "a") == -1
    assert await store.retiring_ids() == ["k2"]
    assert await store.late_ids() == []
    assert [json.loads(m)["id"] for m in await store.idle_models()] == ["k1"]


async def test_exactly_one_replica_takes_over_an_orphaned_claim(store):
    await store.beat("dead", 0.001)
    await store.beat("a", 60)
    await store.beat("b", 60)
    await pooled(store, "k1")
    orphaned = await store.claim("zt", replica="dead")
    await asyncio.sleep(0.01)
    taken = await asyncio.gather(store.take_over_claim("k1", "a"), store.take_over_claim("k1", "b"))
    [claim] = [c for c in taken if c is not None]
    assert claim.model_json == orphaned.model_json
    # The dead replica's pop can neither hand it out nor end it any more.
    assert not await store.hand_over(orphaned, "zt")
    assert not await store.retire_claim(orphaned)
    assert await store.release(claim)
    assert (await store.claim("zt")).kernel_id == "k1"


def spec_model(kernel_id, spec=None):
    model = {"id": kernel_id, "name": "python_kubernetes"}
    if spec is not None:
        model["jkp_spec"] = spec
    return model


async def test_a_replica_claims_counts_and_trims_only_kernels_of_its_spec(store):
    for kernel_id, spec in (("old1", "old"), ("new1", "new"), ("old2", "old"), ("legacy", None)):
        assert await store.reserve_start(kernel_id, 100, 60)
        await store.finish_start(kernel_id, spec_model(kernel_id, spec))
    # Idle, oldest last: old1, new1, old2, legacy. Kernels pooled before fingerprints (legacy,
    # e.g. the original service's) count as any spec.
    assert not await store.reserve_start("n", 2, 60, spec="new")  # new1 + legacy = 2
    assert await store.reserve_start("n", 3, 60, spec="new")
    # Its start counts for its own spec only.
    assert await store.reserve_start("o", 4, 60, spec="old")  # old1, old2, legacy
    assert (await store.claim("zt", spec="new")).kernel_id == "new1"
    assert (await store.claim("zt", spec="old")).kernel_id == "old1"
    assert await store.trim_surplus(2, spec="old") == ["legacy"]  # old2, legacy, o: one over
    assert [json.loads(m)["id"] for m in await store.idle_models()] == ["old2"]


async def test_live_specs_are_those_of_replicas_whose_heartbeat_lasts(store):
    await store.beat("a", 60, "old")
    await store.beat("b", 60, "new")
    await store.beat("c", 0.001, "gone")
    await asyncio.sleep(0.01)
    assert await store.live_specs() == {"old", "new"}
    await store.leave("a")
    assert await store.live_specs() == {"new"}


async def test_a_bound_hand_over_records_its_alias_and_forgetting_the_kernel_drops_it(
    store, aliases
):
    await pooled(store, "k1", "k2")
    claim = await store.claim("alice", alias="client-id", create_id="create-1")
    assert await aliases.taken("client-id") and await aliases.binding("client-id") is None
    binding = {"kernel_id": claim.kernel_id, "pool": "python_kubernetes", "env": {}}
    assert await store.hand_over(claim, "alice", alias="client-id", binding=binding)
    assert await aliases.binding("client-id") == binding
    assert await aliases.aliases_by_kernel() == {claim.kernel_id: "client-id"}
    assert await aliases.unhanded_ids() == {"k1", "k2"} - {claim.kernel_id}

    await store.forget_handed([claim.kernel_id])
    assert await aliases.binding("client-id") is None
    assert not await aliases.taken("client-id")


async def test_a_create_s_claim_reserves_its_kernel_id_for_it_alone(store, aliases):
    await pooled(store, "k1", "k2")
    first = await store.claim("alice", alias="client-id", create_id="create-1", lease_seconds=60)
    with pytest.raises(AliasTaken):
        await store.claim("bob", alias="client-id", create_id="create-2", lease_seconds=60)
    # The refused claim took nothing.
    assert await aliases.unhanded_ids() == {"k1", "k2"}
    assert (await store.counts())["idle"] == 1
    assert await aliases.binding("client-id") is None  # reserved is not bound
    await aliases.drop_reservation("client-id", "create-2")  # not its reservation
    assert await aliases.taken("client-id")
    await aliases.drop_reservation("client-id", "create-1")
    assert not await aliases.taken("client-id")
    second = await store.claim("bob", alias="client-id", create_id="create-2", lease_seconds=60)
    assert {first.kernel_id, second.kernel_id} == {"k1", "k2"}


async def test_a_create_whose_kernel_failed_claims_the_next_under_its_own_reservation(
    store, aliases
):
    await pooled(store, "k1", "k2")
    first = await store.claim("alice", alias="client-id", create_id="create-1", lease_seconds=60)
    assert await store.retire_claim(first)  # its set-up failed: the create takes the next
    second = await store.claim("alice", alias="client-id", create_id="create-1", lease_seconds=60)
    assert {first.kernel_id, second.kernel_id} == {"k1", "k2"}
    assert await aliases.taken("client-id")


async def test_a_bound_kernel_id_is_taken_for_a_create_s_claim(store):
    await pooled(store, "k1", "k2")
    claim = await store.claim("alice", alias="client-id", create_id="create-1")
    binding = {"kernel_id": claim.kernel_id, "pool": "python_kubernetes"}
    assert await store.hand_over(claim, "alice", alias="client-id", binding=binding)
    with pytest.raises(AliasTaken):
        await store.claim("alice", alias="client-id", create_id="create-2")
    assert (await store.counts())["idle"] == 1


async def test_a_create_s_claim_on_an_empty_pool_reserves_nothing(store, aliases):
    assert await store.claim("alice", alias="client-id", create_id="create-1") is None
    assert not await aliases.taken("client-id")


async def test_a_reservation_whose_create_died_runs_out(store, aliases):
    await pooled(store, "k1", "k2")
    await store.claim("alice", alias="client-id", create_id="create-1", lease_seconds=0.0)
    assert not await aliases.taken("client-id")
    assert await store.claim("bob", alias="client-id", create_id="create-2", lease_seconds=60)
    assert await aliases.taken("client-id")


async def test_a_bound_kernel_taken_back_from_its_caller_loses_its_alias(store, aliases):
    await pooled(store, "k1")
    claim = await store.claim("alice")
    binding = {"kernel_id": "k1", "pool": "python_kubernetes"}
    assert await store.hand_over(claim, "alice", alias="client-id", binding=binding)
    assert await store.retire_handed("k1")
    assert await store.retiring_ids() == ["k1"]
    assert not await aliases.taken("client-id")


# -- max_kernels_per_user ----------------------------------------------------------------

EG_LIMIT_TEXT = (
    "A max kernels per user limit has been set to 2 and user 'ann' currently has 2 active "
    "and pending kernels."
)


@pytest.fixture
def counted():
    keys = PoolKeys(
        "test:kernels:idle", "test:kernels:idle:aliases", users="test:kernels:idle:users"
    )
    return PoolStore(fakeredis.FakeAsyncRedis(), keys)


async def test_a_user_at_the_limit_claims_nothing_and_gets_egs_text(counted):
    await pooled(counted, "k1", "k2", "k3")
    for _ in range(2):
        assert isinstance(await counted.claim("ann", user_limit=2), Claim)
    with pytest.raises(UserLimitReached) as refused:
        await counted.claim("ann", user_limit=2)
    assert str(refused.value) == EG_LIMIT_TEXT
    assert len(await counted.idle_models()) == 1  # nothing was taken
    assert isinstance(await counted.claim("bob", user_limit=2), Claim)


async def test_a_claim_ended_without_hand_over_gives_its_slot_back(counted):
    await pooled(counted, "k1", "k2")
    released = await counted.claim("ann", user_limit=1)
    assert await counted.release(released)
    retired = await counted.claim("ann", user_limit=1)
    assert await counted.retire_claim(retired)
    assert isinstance(await counted.claim("ann", user_limit=1), Claim)


async def test_a_handed_out_kernel_forgotten_or_taken_back_gives_its_slot_back(counted):
    await pooled(counted, "k1", "k2", "k3")
    first = await counted.claim("ann", user_limit=1)
    assert await counted.hand_over(first, "ann")
    with pytest.raises(UserLimitReached):
        await counted.claim("ann", user_limit=1)
    await counted.forget_handed([first.kernel_id])
    second = await counted.claim("ann", user_limit=1)
    assert await counted.hand_over(second, "ann")
    assert await counted.retire_handed(second.kernel_id)
    assert isinstance(await counted.claim("ann", user_limit=1), Claim)


async def test_without_a_limit_nothing_is_counted(counted):
    await pooled(counted, "k1")
    claim = await counted.claim("ann")
    assert await counted.hand_over(claim, "ann")
    assert await counted.client.exists(counted.keys.users) == 0


async def test_cold_creates_count_until_their_kernel_is_forgotten(counted):
    cold = counted.user_kernels
    await cold.take_cold("ann", "t1", 2, 60)
    await cold.confirm_cold("ann", "t1", "c1")
    await cold.take_cold("ann", "t2", 2, 60)
    with pytest.raises(UserLimitReached):
        await cold.take_cold("ann", "t3", 2, 60)
    # Warm and cold kernels count together.
    await pooled(counted, "k1")
    with pytest.raises(UserLimitReached):
        await counted.claim("ann", user_limit=2)
    await cold.release("ann", "t2")  # its create started nothing
    await cold.forget_cold(["c1"])
    assert await cold.cold_page(0, 10) == (0, [])
    await cold.take_cold("ann", "t4", 2, 60)
    assert isinstance(await counted.claim("ann", user_limit=2), Claim)


async def test_a_cold_create_that_never_got_an_answer_holds_its_slot_for_its_lease_only(counted):
    cold = counted.user_kernels
    await cold.take_cold("ann", "t1", 1, 0.05)
    with pytest.raises(UserLimitReached):
        await cold.take_cold("ann", "t2", 1, 60)
    await asyncio.sleep(0.1)
    await cold.take_cold("ann", "t2", 1, 60)

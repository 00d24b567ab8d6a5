"""RedisClaims against a real redis-server: the claim rule, one round trip per batch,
credentials, TLS, outages and restarts, and the same answers as MemoryClaims."""

import asyncio
import random
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from consumer.claims import MemoryClaims, PartitionClaims, StoreRefused, StoreUnavailable
from consumer.redisclaims import RedisClaims, connect
from consumer.settings import StoreSettings
from tests.pki import Pki, make_pki
from tests.redisserver import RedisServer

pytestmark = pytest.mark.redis

PASSWORD = "Redis-Pa55word-never-logged"
WRONG = "Wrong-Pa55word-never-logged"
TIMEOUT = 0.5
"""Seconds a claim may take in the outage tests: short, so they stay fast."""


def part(
    partition: int, offsets: list[int], ids: list[str], topic: str = "events"
) -> PartitionClaims:
    return PartitionClaims(topic, partition, offsets, ids)


def store_for(url: str, prefix: str | None = None, **settings: Any) -> RedisClaims:
    """The store as the worker builds it, under a fresh prefix unless one is given."""
    return connect(StoreSettings(url, **settings), prefix or f"test:{uuid.uuid4().hex}:")


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisClaims]:
    claims = store_for(redis.url)
    yield claims
    await claims.close()


async def test_first_claim_counts_and_a_copy_anywhere_else_does_not(store: RedisClaims) -> None:
    assert await store.claim([part(0, [5], ["s1"])]) == [[True]]
    elsewhere = [part(1, [5], ["s1"]), part(0, [6], ["s1"]), part(0, [5], ["s1"], topic="other")]
    assert await store.claim(elsewhere) == [[False], [False], [False]]


async def test_a_record_read_again_at_its_own_position_counts_again(redis: RedisServer) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    batch = [part(0, [10, 11], ["s1", "s2"]), part(3, [7], ["s3"])]
    first = store_for(redis.url, prefix)
    assert await first.claim(batch) == [[True, True], [True]]
    await first.close()  # the replica dies before its counts were published
    successor = store_for(redis.url, prefix)
    try:
        assert await successor.claim(batch) == [[True, True], [True]]
        assert await successor.claim([part(1, [0], ["s1"])]) == [[False]]
    finally:
        await successor.close()


async def test_ids_repeated_within_one_batch_count_at_their_first_position_only(
    store: RedisClaims,
) -> None:
    batch = [
        part(0, [1, 2], ["a", "b"]),
        part(1, [7, 8, 9], ["b", "a", "c"]),
        part(2, [4, 5], ["c", "d"]),
        part(2, [6], ["d"], topic="other"),
    ]
    expected = [[True, True], [False, False, True], [False, True], [False]]
    assert await store.claim(batch) == expected
    assert await store.claim(batch) == expected  # read again whole: the same answers


async def test_a_claim_lasts_at_least_its_ttl_and_at_most_a_quarter_longer(
    redis: RedisServer,
) -> None:
    claims = store_for(redis.url, dedup_store_ttl=2)
    try:
        assert await claims.claim([part(0, [1], ["s1"])]) == [[True]]
        started = time.monotonic()
        assert await claims.claim([part(1, [1], ["s1"])]) == [[False]]
        await asyncio.sleep(1.9 - (time.monotonic() - started))
        assert await claims.claim([part(1, [1], ["s1"])]) == [[False]]
        await asyncio.sleep(2.6 - (time.monotonic() - started))
        assert await claims.claim([part(1, [1], ["s1"])]) == [[True]]
    finally:
        await claims.close()


async def test_each_consumer_group_prefix_has_its_own_claims(redis: RedisServer) -> None:
    one, two = store_for(redis.url), store_for(redis.url)
    try:
        assert await one.claim([part(0, [1], ["s1"])]) == [[True]]
        assert await two.claim([part(1, [1], ["s1"])]) == [[True]]
    finally:
        await one.close()
        await two.close()


async def test_a_batch_of_20000_ids_is_one_round_trip(
    redis: RedisServer, store: RedisClaims
) -> None:
    await store.ping()  # loads the script, as start-up does
    batch = [part(p, list(range(1000, 6000)), [f"{p}-{n}" for n in range(5000)]) for p in range(4)]
    before = await _command_calls(redis)
    answers = await store.claim(batch)
    after = await _command_calls(redis)
    assert [len(a) for a in answers] == [5000] * 4
    assert all(map(all, answers))
    assert after.get("evalsha", 0) - before.get("evalsha", 0) == 1
    # Bulk calls inside the script, up to 2,000 ids each: a read of each of the last five
    # spans' hashes and one write per chunk, 3 chunks for each partition's 5,000.
    assert after["hmget"] - before.get("hmget", 0) == 4 * 3 * 5
    assert after["hset"] - before.get("hset", 0) == 4 * 3
    assert after.get("eval", 0) == before.get("eval", 0)


async def _command_calls(server: RedisServer) -> dict[str, int]:
    admin = Redis.from_url(server.url)
    try:
        stats: dict[str, dict[str, int]] = await admin.info("commandstats")
    finally:
        await admin.aclose()
    return {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}


# --- credentials -------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis-locked"), password=PASSWORD) as server:
        yield server


@pytest.mark.parametrize("source", ["environment", "file"])
async def test_the_right_password_opens_the_store(
    locked: RedisServer, source: str, tmp_path: Path
) -> None:
    if source == "file":
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\n")
        claims = store_for(locked.url, dedup_store_password_file=secret)
    else:
        claims = store_for(locked.url, dedup_store_password=PASSWORD)
    try:
        await claims.ping()
        assert await claims.claim([part(0, [1], ["s1"])]) == [[True]]
    finally:
        await claims.close()


@pytest.mark.parametrize("password", [WRONG, None], ids=["wrong", "missing"])
async def test_a_wrong_or_missing_password_is_refused_without_showing_it(
    locked: RedisServer, password: str | None
) -> None:
    claims = store_for(locked.url, dedup_store_password=password)
    try:
        with pytest.raises(StoreRefused) as at_ping:
            await claims.ping()
        with pytest.raises(StoreRefused) as at_claim:
            await claims.claim([part(0, [1], ["s1"])])
    finally:
        await claims.close()
    for caught in (at_ping, at_claim):
        shown = "".join(traceback.format_exception(caught.value))
        assert PASSWORD not in shown
        assert WRONG not in shown


async def _acl_user(server: RedisServer, keys: str, categories: list[str]) -> dict[str, Any]:
    """A new ACL user with these rights; the settings that log in as it."""
    name, secret = f"user-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = Redis.from_url(server.url, password=PASSWORD)
    try:
        await admin.acl_setuser(
            name, enabled=True, passwords=[f"+{secret}"], keys=[keys], categories=categories
        )
    finally:
        await admin.aclose()
    return {"dedup_store_username": name, "dedup_store_password": secret}


async def test_the_acl_user_of_the_settings_claims_under_its_prefix(locked: RedisServer) -> None:
    claims = store_for(locked.url, **await _acl_user(locked, "test:*", ["+@all"]))
    try:
        await claims.ping()
        assert await claims.claim([part(0, [1], ["s1"])]) == [[True]]
    finally:
        await claims.close()


@pytest.mark.parametrize(
    ("keys", "categories"),
    [("other:*", ["+@all"]), ("*", ["+@read", "+@connection"])],
    ids=["keys-elsewhere", "no-scripts"],
)
async def test_a_user_without_rights_to_the_keys_or_the_script_is_refused_at_ping(
    locked: RedisServer, keys: str, categories: list[str]
) -> None:
    claims = store_for(locked.url, **await _acl_user(locked, keys, categories))
    try:
        with pytest.raises(StoreRefused):
            await claims.ping()
        with pytest.raises(StoreRefused):
            await claims.claim([part(0, [1], ["s1"])])
    finally:
        await claims.close()


# --- TLS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis-tls"), pki=pki) as server:
        yield server


async def test_tls_with_the_ca_that_signed_redis_works(tls_redis: RedisServer, pki: Pki) -> None:
    assert tls_redis.url.startswith("rediss://")
    claims = store_for(tls_redis.url, dedup_store_cafile=pki.ca)
    try:
        assert await claims.claim([part(0, [1], ["s1"])]) == [[True]]
    finally:
        await claims.close()


async def test_tls_with_an_untrusted_ca_is_refused(tls_redis: RedisServer, pki: Pki) -> None:
    claims = store_for(tls_redis.url, dedup_store_cafile=pki.other_ca)
    try:
        with pytest.raises(StoreRefused, match="certificate"):
            await claims.claim([part(0, [1], ["s1"])])
    finally:
        await claims.close()


# --- outages and restarts ----------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, to stop and restart; AOF on, as in production."""
    with RedisServer(tmp_path, aof=True) as server:
        yield server


@pytest.fixture
async def own_store(own_redis: RedisServer) -> AsyncIterator[RedisClaims]:
    claims = store_for(own_redis.url, dedup_store_timeout=TIMEOUT)
    yield claims
    await claims.close()


async def _unavailable_within_timeout(claims: RedisClaims) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await claims.claim([part(0, [1], ["s1"])])
    assert time.monotonic() - started < TIMEOUT + 0.4  # no retry after the deadline
    assert not isinstance(caught.value, StoreRefused)  # an outage is worth waiting out


async def test_a_stopped_redis_is_unavailable_then_back_after_a_restart(
    own_redis: RedisServer, own_store: RedisClaims
) -> None:
    assert await own_store.claim([part(0, [1], ["s1"])]) == [[True]]
    own_redis.stop()
    await _unavailable_within_timeout(own_store)
    with pytest.raises(StoreUnavailable):
        await own_store.ping()
    own_redis.restart()
    await own_store.ping()
    assert await own_store.claim([part(0, [1], ["s1"]), part(1, [1], ["s1"])]) == [[True], [False]]


async def test_a_frozen_redis_is_unavailable_within_the_timeout(
    own_redis: RedisServer, own_store: RedisClaims
) -> None:
    await own_store.ping()
    own_redis.freeze()
    try:
        await _unavailable_within_timeout(own_store)
    finally:
        own_redis.thaw()
    assert await own_store.claim([part(0, [1], ["s1"])]) == [[True]]


@pytest.mark.parametrize("end", ["stop", "kill"])
async def test_claims_survive_a_restart_with_the_append_only_file(
    own_redis: RedisServer, own_store: RedisClaims, end: str
) -> None:
    assert await own_store.claim([part(0, [1], ["s1"])]) == [[True]]
    getattr(own_redis, end)()
    own_redis.restart(keep_data=True)
    assert await own_store.claim([part(1, [1], ["s1"]), part(0, [1], ["s1"])]) == [[False], [True]]


async def test_a_redis_restarted_empty_has_forgotten_its_claims(
    own_redis: RedisServer, own_store: RedisClaims
) -> None:
    assert await own_store.claim([part(0, [1], ["s1"])]) == [[True]]
    own_redis.stop()
    own_redis.restart(keep_data=False)
    assert await own_store.claim([part(1, [1], ["s1"])]) == [[True]]


# --- the same rule as MemoryClaims -------------------------------------------


def _scenario(seed: int) -> list[list[PartitionClaims]]:
    """Batches over two topics of three partitions, ids drawn from a small pool (so they
    repeat within and across batches and partitions), and some batches read again at the
    same positions, as after a crash or a hand-over (sometimes only some partitions).
    Offsets start past 10**15, where Lua's default number format would drop digits."""
    rng = random.Random(seed)
    pool = [f"s{n}" for n in range(400)]
    next_offset = {
        (topic, p): 10**15 + rng.randrange(10**12) for topic in ("a", "b") for p in range(3)
    }
    batches: list[list[PartitionClaims]] = []
    for _ in range(80):
        if batches and rng.random() < 0.25:
            again = rng.choice(batches)
            batches.append(rng.sample(again, k=rng.randint(1, len(again))))
            continue
        batch = []
        for topic, p in rng.sample(sorted(next_offset), k=rng.randint(1, 4)):
            start = next_offset[topic, p]
            n = rng.randint(0, 50)
            next_offset[topic, p] += n
            ids = [rng.choice(pool) for _ in range(n)]
            batch.append(PartitionClaims(topic, p, range(start, start + n), ids))
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_redis_gives_the_answers_of_memory_claims(store: RedisClaims, seed: int) -> None:
    memory = MemoryClaims(ttl=3600)
    counted = repeats = 0
    for batch in _scenario(seed):
        expected = await memory.claim(batch)
        assert await store.claim(batch) == expected
        counted += sum(map(sum, expected))
        repeats += sum(len(a) - sum(a) for a in expected)
    assert counted > 100
    assert repeats > 100

"""The claim store in Redis: consumer/claims.py's rule, shared by every replica.

One round trip per batch, whatever its size: a Lua script gets the whole batch as one
msgpack blob and answers with one string, a '1' (counts) or '0' (repeat) per record in
batch order. Scripts run atomically, so two replicas never both win one id. An id that
appears twice in one batch is claimed by the first in order: the later copies are not
sent (they are repeats, or the same record twice), so the script never has to remember
what it claimed earlier in the call. The script only adds claims that were missing,
never moves one, so a call retried after a lost reply gives the same answers.

Claims live in hashes, one per span of a quarter of `--dedup-store-ttl` (the span's
number, from Redis's own clock, ends the key): field the session id, value the claiming
position `topic:partition:offset`. An id is claimed when one of the last five spans'
hashes holds it, so a claim lasts at least the TTL and at most a quarter longer. The
script reads a batch's ids from those hashes with HMGET and adds the unclaimed ones to
the current one with one HSET, a few calls per 2,000 ids rather than one SET per id, and
drops (UNLINK, freed off Redis's main thread) the span that just left, so a hash of many
claims is never freed in one blocking expiry; PEXPIREAT removes a hash anyway once it is
of no use.

Why hashes rather than one key per id with its own expiry (`SET id position NX GET PX
ttl`, the first version): measured on the same machine, the script took 5.3 µs per
claim that way and ~3 µs this way, and a claim takes ~120 bytes of Redis memory instead
of ~200. Redis runs one script at a time, on the machine's cores beside the workers and
the broker, so its time per claim is what bounds the store mode.

The script builds its keys from its arguments, which Redis Cluster forbids: this needs one
Redis (or a primary with replicas), not a cluster.
"""

import asyncio
import ssl
from collections.abc import Awaitable, Sequence
from itertools import chain
from typing import Any, TypeVar

import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from consumer.claims import PartitionClaims, StoreRefused, StoreUnavailable
from consumer.settings import StoreSettings

T = TypeVar("T")

SPANS = 4
"""A claim lives in the hash of its span, a quarter of the TTL: looked for in the last
SPANS + 1 spans' hashes, it lasts at least the TTL and at most a quarter longer."""

CLAIM_SCRIPT = """
local prefix, ttl_ms, spans = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local width = math.max(1, math.floor(ttl_ms / spans))
local now = redis.call('TIME')
local span = math.floor((now[1] * 1000 + math.floor(now[2] / 1000)) / width)
-- %d, not tostring: Lua 5.1 prints 1e+15 for large numbers
local hashes = {}
for j = 0, spans do hashes[j + 1] = prefix .. string.format('%d', span - j) end
redis.call('UNLINK', prefix .. string.format('%d', span - spans - 1))
local out, n = {}, 0
for _, part in ipairs(cmsgpack.unpack(ARGV[3])) do
  local at, ids, offsets = part[1], part[2], part[3]
  -- consecutive offsets come as the first one alone
  local first = type(offsets) == 'number' and offsets
  -- in chunks: unpack() of more than ~8000 values overflows Lua's C stack
  for lo = 1, #ids, 2000 do
    local hi = math.min(lo + 1999, #ids)
    local found = {}
    for j = 1, #hashes do found[j] = redis.call('HMGET', hashes[j], unpack(ids, lo, hi)) end
    local new, m = {}, 0
    for i = lo, hi do
      local id, o = ids[i], first and first + i - 1 or offsets[i]
      -- a number joins as %.14g: exact below 1e14, and cheaper than string.format
      local mine = o < 1e14 and at .. o or at .. string.format('%d', o)
      local held = false
      for j = 1, #found do
        held = found[j][i - lo + 1]
        if held then break end
      end
      n = n + 1
      if not held then
        new[m + 1] = id
        new[m + 2] = mine
        m = m + 2
        out[n] = '1'
      elseif held == mine then out[n] = '1' else out[n] = '0' end
    end
    if m > 0 then redis.call('HSET', hashes[1], unpack(new)) end
  end
end
redis.call('PEXPIREAT', hashes[1], string.format('%d', (span + spans + 1) * width))
return table.concat(out)
"""


class RedisClaims:
    """Claims in Redis under `key_prefix` (one prefix per consumer group).

    `ttl`: seconds a claim lasts. `timeout`: seconds a claim or ping may take, retries
    included, before Redis counts as unavailable. `secrets`: strings never to appear in an
    error's text (the password)."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        ttl: float,
        timeout: float,
        secrets: Sequence[str] = (),
    ) -> None:
        self._client = client
        self._script = client.register_script(CLAIM_SCRIPT)
        self._prefix = key_prefix
        self._ttl_ms = max(1, round(ttl * 1000))
        self._timeout = timeout
        self._secrets = tuple(s for s in secrets if s)
        self._encoder = msgspec.msgpack.Encoder()

    async def claim(self, batch: Sequence[PartitionClaims]) -> list[list[bool]]:
        if not batch:
            return []
        total = sum(len(p.ids) for p in batch)
        if len(set(chain.from_iterable(p.ids for p in batch))) == total:  # the usual call
            return await self._claim_distinct(batch)
        # Rare: the first copies claim first; the later copies then meet, in a second
        # call, the claim each first copy made or found (every id holds one by then, so
        # that call only compares, and copies among them need no care).
        firsts, later, where = _first_copies(batch)
        answers = await self._claim_distinct(firsts), await self._claim_distinct(later)
        return [[answers[rest][k][i] for rest, i in part] for k, part in enumerate(where)]

    async def _claim_distinct(self, batch: Sequence[PartitionClaims]) -> list[list[bool]]:
        packed = self._encoder.encode(
            [(f"{p.topic}:{p.partition}:", _plain(p.ids), _offsets(p)) for p in batch]
        )
        reply: bytes = await self._call(
            self._script(args=[self._prefix, self._ttl_ms, packed, SPANS])
        )
        answers = reply.translate(_AS_BOOL_BYTES)
        out, start = [], 0
        for p in batch:
            end = start + len(p.ids)
            out.append(list(map(bool, answers[start:end])))
            start = end
        return out

    async def ping(self) -> None:
        await self._call(self._check_access())

    async def _check_access(self) -> None:
        """SCRIPT LOAD and EXISTS rather than PING, in one round trip: they prove that the
        user may run the script and touch keys under the prefix (ACLs), and the first batch
        then does not travel twice (EVALSHA, NOSCRIPT, EVALSHA)."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.script_load(CLAIM_SCRIPT)
            pipe.exists(f"{self._prefix}ping")
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except TimeoutError:
            raise StoreUnavailable(f"redis: no answer within {self._timeout:g} s") from None
        except redis_errors.RedisError as exc:
            if _refused(exc):
                raise StoreRefused(f"redis refused us: {self._safe(exc)}") from None
            if _untrusted(exc):
                raise StoreRefused(f"redis certificate not trusted: {self._safe(exc)}") from None
            raise StoreUnavailable(f"redis: {self._safe(exc)}") from None

    def _safe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def connect(settings: StoreSettings, key_prefix: str) -> RedisClaims:
    """A RedisClaims for `settings`. No I/O yet: call `ping()` at start-up to fail fast."""
    password = settings.password()
    options: dict[str, Any] = {
        "socket_timeout": settings.dedup_store_timeout,
        "socket_connect_timeout": settings.dedup_store_timeout,
        # redis-py's default retries ten times with back-off, far past our timeout; one
        # immediate retry covers a connection that Redis closed while it sat in the pool.
        "retry": Retry(NoBackoff(), 1),
        "username": settings.dedup_store_username,
        "password": password,
    }
    if settings.dedup_store_cafile is not None:
        options["ssl_ca_certs"] = str(settings.dedup_store_cafile)
    return RedisClaims(
        Redis.from_url(settings.dedup_store, **options),
        key_prefix=key_prefix,
        ttl=settings.dedup_store_ttl,
        timeout=settings.dedup_store_timeout,
        secrets=() if password is None else (password,),
    )


_AS_BOOL_BYTES = bytes.maketrans(b"01", b"\x00\x01")


def _first_copies(
    batch: Sequence[PartitionClaims],
) -> tuple[list[PartitionClaims], list[PartitionClaims], list[list[tuple[int, int]]]]:
    """The batch split into each id's first copy and the later copies; and for every
    record, where its answer will be: (0, i) among the first copies of its part, (1, i)
    among the later ones."""
    seen: set[str] = set()
    firsts, later, where = [], [], []
    for p in batch:
        parts: tuple[tuple[list[int], list[str]], ...] = (([], []), ([], []))
        at = []
        for offset, session_id in zip(p.offsets, p.ids, strict=True):
            rest = int(session_id in seen)
            seen.add(session_id)
            offsets, ids = parts[rest]
            at.append((rest, len(ids)))
            offsets.append(offset)
            ids.append(session_id)
        firsts.append(PartitionClaims(p.topic, p.partition, *parts[0]))
        later.append(PartitionClaims(p.topic, p.partition, *parts[1]))
        where.append(at)
    return firsts, later, where


def _offsets(p: PartitionClaims) -> int | Sequence[int]:
    """Consecutive offsets as the first one: nothing per record to pack or unpack."""
    o = p.offsets
    if type(o) is range and o.step == 1 and len(o) == len(p.ids) and len(o):
        return o.start
    return _plain(o)


def _plain(values: Sequence[Any]) -> Sequence[Any]:
    """msgspec encodes lists and tuples; any other sequence is copied into a list."""
    return values if isinstance(values, list | tuple) else list(values)


def _refused(exc: redis_errors.RedisError) -> bool:
    """Whether Redis turned down these credentials or this user's rights. A key outside
    the user's ACL comes back from inside the script as a plain error, known by its text."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return True
    return isinstance(exc, redis_errors.ResponseError) and "user executing the script" in str(exc)


def _untrusted(exc: BaseException) -> bool:
    """Whether a certificate check failed somewhere in `exc`'s chain (redis-py re-raises
    the ssl error as a ConnectionError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False

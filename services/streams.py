"""Typed Redis Streams: the bus between tiers.

Every tier is a pool of identical consumers in one consumer group. Delivery is at least once; effects are
exactly once because a handler's outputs, the acknowledgement and a "done" marker keyed by the message id are
committed in one atomic script (`commit`). An entry whose consumer died is taken over once it has been idle
for `reclaim_idle_ms` (XAUTOCLAIM); after `max_deliveries` it moves to the stream's dead-letter stream with its
last error. Streams are capped (XADD MAXLEN ~) and trimmed up to the oldest entry a group still needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.config import Settings
from services.contracts import ContractError, Message
from services.telemetry import (
    STREAM_DEAD_LETTERS,
    STREAM_LAG,
    STREAM_LENGTH,
    STREAM_PENDING,
    STREAM_PUBLISHED,
    counter,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# What a call raises while Redis is unreachable, restarting or still loading its AOF (BusyLoadingError is a
# ConnectionError): the caller waits and retries, the connection pool reconnects by itself.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
REDIS_RETRY = (0.1, 2.0, 20)  # first wait (s), cap (s), attempts of one call
REDIS_RETRIES = counter("searchr1_redis_retries_total", "Redis calls retried after Redis was unreachable")

KIND_FIELD = b"t"
DATA_FIELD = b"d"
ERRORS_SUFFIX = ":errors"
DEAD_SUFFIX = ":dead"

# Atomically: remember the message id, publish the outputs (only the first time), acknowledge the entry.
# KEYS: source stream, done-marker key, output streams...   ARGV: group, entry id, marker ttl ms, maxlen,
# then (kind, payload) per output stream.
_COMMIT_SCRIPT = """
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3])
if fresh then
  for i = 3, #KEYS do
    local a = 5 + (i - 3) * 2
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[4], '*', 't', ARGV[a], 'd', ARGV[a + 1])
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1] .. ':errors', ARGV[2])
if fresh then return 1 else return 0 end
"""

# Atomically: copy the entry with its error to the dead-letter stream and acknowledge it.
# KEYS: source stream, dead-letter stream.  ARGV: group, entry id, kind, payload, error, deliveries, maxlen.
_DEAD_LETTER_SCRIPT = """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 't', ARGV[3], 'd', ARGV[4],
           'error', ARGV[5], 'source_id', ARGV[2], 'group', ARGV[1], 'deliveries', ARGV[6])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1] .. ':errors', ARGV[2])
return 1
"""


@dataclass(slots=True)
class Entry(Generic[M]):
    """One delivered stream entry. `message` is None when the payload could not be decoded (`error` says why)."""

    stream: str
    entry_id: str
    kind: bytes
    payload: bytes
    message: M | None
    error: str | None = None
    deliveries: int = 1


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """An entry of a dead-letter stream: the original kind and payload, why it failed, how often it was tried."""

    entry_id: str
    kind: bytes
    payload: bytes
    error: str
    deliveries: str


@dataclass(slots=True)
class Output:
    """A message a handler wants published when its input is committed."""

    stream: str
    message: Message


@dataclass(slots=True, frozen=True)
class GroupStats:
    stream: str
    group: str
    length: int
    lag: int
    pending: int
    consumers: int


class _CountedRetry(Retry):
    """redis-py's retry, counting each failed attempt in `searchr1_redis_retries_total`."""

    async def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[no-untyped-def]
        async def counted(error: Exception, *count: int) -> None:
            REDIS_RETRIES.inc()
            await fail(error, *count)

        return await super().call_with_retry(do, counted, is_retryable, with_failure_count)


def connect(settings: Settings) -> aioredis.Redis:
    """A Redis client with timeouts on every call (binary-safe: responses stay bytes). A call that finds Redis
    gone (restarting, loading its AOF) reconnects and is retried with doubling backoff (`REDIS_RETRY`: first
    wait, cap, attempts: about half a minute in all) before it raises; every tier's calls go through here."""
    first_s, cap_s, attempts = REDIS_RETRY
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry=_CountedRetry(ExponentialBackoff(cap=cap_s, base=first_s), attempts),
        retry_on_error=list(REDIS_UNAVAILABLE),
    )


class Streams:
    """Typed publish/consume over Redis Streams, with the names of the system's streams."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.key_prefix
        self._commit = redis.register_script(_COMMIT_SCRIPT)
        self._dead_letter = redis.register_script(_DEAD_LETTER_SCRIPT)

    # -- names -------------------------------------------------------------------------------------------
    @property
    def rollout(self) -> str:
        return f"{self.prefix}:rollout"

    @property
    def reward(self) -> str:
        return f"{self.prefix}:reward"

    def job(self, job_id: str, channel: str) -> str:
        """Per-job streams: `scored`, `weights`, `events`."""
        return f"{self.prefix}:job:{job_id}:{channel}"

    @staticmethod
    def dead_letter_stream(stream: str) -> str:
        return stream + DEAD_SUFFIX

    # -- connection --------------------------------------------------------------------------------------
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- publish -----------------------------------------------------------------------------------------
    async def publish(self, stream: str, message: Message) -> str:
        entry_id = await self.redis.xadd(
            stream,
            {KIND_FIELD: message.kind, DATA_FIELD: message.to_wire()},
            maxlen=self.settings.stream_maxlen,
            approximate=True,
        )
        STREAM_PUBLISHED.labels(stream).inc()
        return entry_id.decode()

    async def publish_many(self, stream: str, messages: Sequence[Message]) -> list[str]:
        """Publish a batch in one pipelined round trip."""
        if not messages:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.xadd(
                    stream,
                    {KIND_FIELD: message.kind, DATA_FIELD: message.to_wire()},
                    maxlen=self.settings.stream_maxlen,
                    approximate=True,
                )
            ids = await pipe.execute()
        STREAM_PUBLISHED.labels(stream).inc(len(messages))
        return [entry_id.decode() for entry_id in ids]

    async def wait_for_room(self, stream: str, group: str, max_lag: int, timeout_s: float) -> None:
        """Back-pressure for producers: wait until the group has fewer than `max_lag` undelivered entries."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await self.stats(stream, group)
            if stats.lag < max_lag:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{stream} has {stats.lag} undelivered entries for group {group} (bound {max_lag}) "
                    f"after waiting {timeout_s:.0f}s: are its consumers running?"
                )
            await asyncio.sleep(0.05)

    # -- read without a group --------------------------------------------------------------------------------
    async def latest_entry(self, stream: str, message_type: type[M]) -> Entry[M] | None:
        """The newest entry of `stream` (None while it is empty): its id is a cursor for `entries` that skips the
        past; `message` is None, with its `error`, where it cannot be decoded."""
        rows = await self.redis.xrevrange(stream, count=1)
        return self._decode(stream, *rows[0], message_type, 1) if rows else None

    async def latest(self, stream: str, message_type: type[M]) -> M | None:
        """The newest message of `stream` (None while it is empty); ContractError if it cannot be decoded."""
        entry = await self.latest_entry(stream, message_type)
        if entry is None:
            return None
        if entry.message is None:
            raise ContractError(entry.error or f"entry {entry.entry_id} of {stream} cannot be decoded")
        return entry.message

    async def entries(
        self, stream: str, message_type: type[M], after: str = "0-0", block_ms: int | None = None, count: int = 500
    ) -> list[Entry[M]]:
        """Entries after entry id `after`, oldest first: all of them, or with `block_ms` up to `count`, waiting up
        to `block_ms` for the first. An entry that cannot be decoded comes with `message` None and its `error`."""
        if block_ms is None:
            rows = await self.redis.xrange(stream, min=f"({after}" if after != "0-0" else "-", max="+")
        else:
            response = await self.redis.xread({stream: after}, block=block_ms, count=count)
            rows = response[0][1] if response else []
        return [self._decode(stream, entry_id, fields, message_type, 1) for entry_id, fields in rows]

    # -- consume -----------------------------------------------------------------------------------------
    async def ensure_group(self, stream: str, group: str, start: str = "0") -> None:
        """Create the consumer group (and the stream) unless it exists."""
        try:
            await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        message_type: type[M],
        count: int = 64,
        block_ms: int | None = 1000,
    ) -> list[Entry[M]]:
        """Deliver up to `count` new entries to `consumer`, blocking up to `block_ms` for the first."""
        response = await self.redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        if not response:
            return []
        [(_, raw_entries)] = response
        return [self._decode(stream, entry_id, fields, message_type, 1) for entry_id, fields in raw_entries]

    async def reclaim(
        self, stream: str, group: str, consumer: str, message_type: type[M], count: int = 64
    ) -> list[Entry[M]]:
        """Take over entries idle longer than `reclaim_idle_ms`; dead-letter those delivered too often."""
        min_idle = self.settings.reclaim_idle_ms
        over_delivered = await self.redis.xpending_range(stream, group, min="-", max="+", count=count, idle=min_idle)
        for info in over_delivered:
            if info["times_delivered"] >= self.settings.max_deliveries:
                await self._dead_letter_by_id(stream, group, info["message_id"].decode(), info["times_delivered"])
        _, claimed, _deleted = await self.redis.xautoclaim(
            stream, group, consumer, min_idle_time=min_idle, start_id="0-0", count=count
        )
        entries = []
        for entry_id, fields in claimed:
            if fields is None:  # trimmed away while pending
                await self.redis.xack(stream, group, entry_id)
                continue
            entries.append(self._decode(stream, entry_id, fields, message_type, 2))
        return entries

    def _decode(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], message_type: type[M], deliveries: int
    ) -> Entry[M]:
        kind = fields.get(KIND_FIELD, b"")
        payload = fields.get(DATA_FIELD, b"")
        entry: Entry[M] = Entry(stream, entry_id.decode(), kind, payload, None, deliveries=deliveries)
        if kind.decode(errors="replace") != message_type.kind:
            entry.error = f"entry {entry.entry_id} of {stream} is a {kind!r}, expected {message_type.kind!r}"
            return entry
        try:
            entry.message = message_type.from_wire(payload)
        except ContractError as exc:
            entry.error = f"entry {entry.entry_id} of {stream}: {exc}"
        return entry

    # -- settle ------------------------------------------------------------------------------------------
    async def ack(self, stream: str, group: str, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        return await self.redis.xack(stream, group, *ids) if ids else 0

    def done_key(self, group: str, message: Message) -> str:
        return f"{self.prefix}:done:{group}:{message.msg_id}"

    async def commit(self, group: str, settled: Sequence[tuple[Entry[M], Sequence[Output]]]) -> list[bool]:
        """Atomically publish each entry's outputs and acknowledge it, once per message id.

        Returns, per entry, whether its outputs were published (False: a duplicate, already done elsewhere).
        """
        if not settled:
            return []
        ttl_ms = self.settings.dedupe_ttl_s * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry, outputs in settled:
                assert entry.message is not None, "only decoded entries can be committed"
                keys = [entry.stream, self.done_key(group, entry.message), *(o.stream for o in outputs)]
                args: list[str | bytes | int] = [group, entry.entry_id, ttl_ms, self.settings.stream_maxlen]
                for output in outputs:
                    args += [output.message.kind, output.message.to_wire()]
                await self._commit(keys=keys, args=args, client=pipe)
            results = await pipe.execute()
        for _, outputs in settled:
            for output in outputs:
                STREAM_PUBLISHED.labels(output.stream).inc()
        return [bool(result) for result in results]

    async def record_failure(self, stream: str, entry_id: str, error: str) -> None:
        """Remember why an entry failed; the error travels with it if it ends in the dead-letter stream."""
        await self.redis.hset(stream + ERRORS_SUFFIX, entry_id, error[:2000])

    async def dead_letter(self, group: str, entry: Entry[M], error: str) -> None:
        await self._dead_letter(
            keys=[entry.stream, self.dead_letter_stream(entry.stream)],
            args=[
                group,
                entry.entry_id,
                entry.kind,
                entry.payload,
                error[:2000],
                entry.deliveries,
                self.settings.stream_maxlen,
            ],
        )
        STREAM_DEAD_LETTERS.labels(entry.stream, group, "undecodable" if entry.message is None else "failed").inc()
        log.warning("dead-lettered %s %s: %s", entry.stream, entry.entry_id, error)

    async def dead_letters(self, stream: str, count: int | None = None) -> list[DeadLetter]:
        """The oldest `count` (default: all) dead letters of `stream`."""
        rows = await self.redis.xrange(self.dead_letter_stream(stream), count=count)
        return [
            DeadLetter(
                entry_id.decode(),
                fields.get(KIND_FIELD, b""),
                fields.get(DATA_FIELD, b""),
                fields.get(b"error", b"").decode(errors="replace"),
                fields.get(b"deliveries", b"?").decode(errors="replace"),
            )
            for entry_id, fields in rows
        ]

    async def dead_letter_count(self, stream: str) -> int:
        return await self.redis.xlen(self.dead_letter_stream(stream))

    async def replay(self, stream: str, letters: Sequence[DeadLetter]) -> None:
        """Put dead letters back into `stream` to be tried again; each leaves the dead-letter stream as its copy
        enters the stream (one transaction per letter)."""
        for letter in letters:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(stream, {KIND_FIELD: letter.kind, DATA_FIELD: letter.payload},
                          maxlen=self.settings.stream_maxlen, approximate=True)  # fmt: skip
                pipe.xdel(self.dead_letter_stream(stream), letter.entry_id)
                await pipe.execute()
        if letters:
            STREAM_PUBLISHED.labels(stream).inc(len(letters))

    async def _dead_letter_by_id(self, stream: str, group: str, entry_id: str, deliveries: int) -> None:
        rows = await self.redis.xrange(stream, min=entry_id, max=entry_id)
        last_error = await self.redis.hget(stream + ERRORS_SUFFIX, entry_id)
        error = (last_error or b"no error recorded").decode(errors="replace")
        if not rows:
            await self.redis.xack(stream, group, entry_id)
            return
        _, fields = rows[0]
        entry: Entry[Message] = Entry(
            stream, entry_id, fields.get(KIND_FIELD, b""), fields.get(DATA_FIELD, b""), None, deliveries=deliveries
        )
        await self._dead_letter(
            keys=[stream, self.dead_letter_stream(stream)],
            args=[
                group,
                entry_id,
                entry.kind,
                entry.payload,
                f"gave up after {deliveries} deliveries: {error}",
                deliveries,
                self.settings.stream_maxlen,
            ],
        )
        STREAM_DEAD_LETTERS.labels(stream, group, "max_deliveries").inc()
        log.warning("dead-lettered %s %s after %d deliveries: %s", stream, entry_id, deliveries, error)

    # -- observe and trim --------------------------------------------------------------------------------
    async def stats(self, stream: str, group: str) -> GroupStats:
        """Length, lag (never delivered) and pending (delivered, unacked) of a group; also sets the gauges."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            length, groups = await pipe.execute()
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == group:
                lag = info.get("lag")
                stats = GroupStats(
                    stream,
                    group,
                    length,
                    int(lag if lag is not None else length),
                    int(info["pending"]),
                    int(info["consumers"]),
                )
                break
        else:
            raise LookupError(f"stream {stream} has no consumer group {group}")
        STREAM_LENGTH.labels(stream).set(stats.length)
        STREAM_LAG.labels(stream, group).set(stats.lag)
        STREAM_PENDING.labels(stream, group).set(stats.pending)
        return stats

    async def trim_consumed(self, stream: str) -> int:
        """Drop the entries every group has delivered and acknowledged (XTRIM MINID); returns how many went.

        Per group, the oldest entry still needed is its oldest pending one, else the first undelivered one.
        """
        groups = await self.redis.xinfo_groups(stream)
        if not groups:
            return 0
        needed: list[tuple[int, int]] = []
        for info in groups:
            pending = await self.redis.xpending(stream, info["name"])
            if pending["pending"]:
                needed.append(_parse_id(pending["min"]))
            last_ms, last_seq = _parse_id(info["last-delivered-id"])
            needed.append((last_ms, last_seq + 1))
        min_ms, min_seq = min(needed)
        return await self.redis.xtrim(stream, minid=f"{min_ms}-{min_seq}", approximate=False)


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)

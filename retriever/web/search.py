"""Web search as a retrieval backend: the API's queries go to SerpAPI or Google, results come back as `Hit`s.

A result becomes a passage the way Search-R1's corpus writes them: id = the link, contents = `"Title"` on the
first line and the snippet after it; its score is 1/rank (the providers give none). Repeated queries of a
batch are searched once, and answers are kept in a bounded TTL cache, since every provider call costs quota.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from retriever.corpus import Passage
from retriever.index import Hit
from retriever.metrics import QUERIES, WEB_CACHE
from retriever.search import SearchItem
from retriever.settings import RetrieverSettings
from retriever.web.client import ErrorParser, JsonClient, RateLimiter
from retriever.web.providers import GoogleCse, SerpApi, WebResult

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `max_entries` values, each forgotten `ttl_s` after it was stored; the least recently used goes
    first when full. Thread-safe."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Provider(Protocol):
    name: str
    label: str
    parse_error: ErrorParser

    def search(self, client: JsonClient, query: str, count: int) -> list[WebResult]: ...


def hit_of(result: WebResult, rank: int) -> Hit:
    """The `rank`-th (1-based) web result as a hit in the corpus's passage shape."""
    return Hit(Passage(result.link, result.title, f'"{result.title}"\n{result.snippet}'), 1.0 / rank)


class WebSearcher:
    def __init__(self, provider: Provider, client: JsonClient, cache: TtlCache, concurrency: int = 4) -> None:
        self.provider = provider
        self.client = client
        self.cache: TtlCache[tuple[str, int], list[WebResult]] = cache
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"web-{provider.label}")

    def search_items(self, items: Sequence[SearchItem]) -> list[list[Hit]]:
        """Results per item, in order; the first failed provider call fails the batch with its WebSearchError."""
        keys = list(dict.fromkeys((item.query, item.topk) for item in items))
        found = {key: self.cache.get(key) for key in keys}
        missing = [key for key, value in found.items() if value is None]
        WEB_CACHE.labels("hit").inc(len(keys) - len(missing))
        WEB_CACHE.labels("miss").inc(len(missing))
        fetched = self._pool.map(lambda key: self.provider.search(self.client, *key), missing)
        for key, results in zip(missing, fetched, strict=True):
            self.cache.put(key, results)
            found[key] = results
        QUERIES.labels(self.provider.label).inc(len(items))
        return [[hit_of(r, rank) for rank, r in enumerate(found[(i.query, i.topk)] or [], 1)] for i in items]

    def passages(self) -> None:
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


def load_web_searcher(settings: RetrieverSettings) -> WebSearcher:
    """The SerpAPI or Google backend the settings choose (their validation guarantees the keys)."""
    provider: Provider
    if settings.search_backend == "serpapi":
        assert settings.serpapi_api_key is not None
        provider = SerpApi(settings.serpapi_url, settings.serpapi_api_key.get_secret_value())
    elif settings.search_backend == "google":
        assert settings.google_api_key is not None and settings.google_cx
        provider = GoogleCse(settings.google_url, settings.google_api_key.get_secret_value(), settings.google_cx)
    else:
        raise ValueError(f"{settings.search_backend!r} is not a web search backend")
    client = JsonClient(
        provider.name,
        provider.label,
        provider.parse_error,
        timeout_s=settings.web_timeout_s,
        retries=settings.web_retries,
        backoff_s=settings.web_backoff_s,
        limiter=RateLimiter(settings.web_rate_per_s, max_wait_s=settings.web_timeout_s),
    )
    cache: TtlCache[tuple[str, int], list[WebResult]] = TtlCache(settings.web_cache_ttl_s, settings.web_cache_entries)
    return WebSearcher(provider, client, cache, settings.web_concurrency)

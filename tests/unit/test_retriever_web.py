"""The web backends' local pieces: the bounded TTL cache, the client-side rate limit, and reading providers'
error bodies (quota or not)."""

from __future__ import annotations

import threading
import time

import pytest

from retriever.web.client import RateLimiter, WebSearchError
from retriever.web.providers import GoogleCse, SerpApi
from retriever.web.search import TtlCache


def test_cache_forgets_after_its_ttl() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.1, max_entries=10)
    cache.put("a", 1)
    assert cache.get("a") == 1
    time.sleep(0.15)
    assert cache.get("a") is None and len(cache) == 0


def test_cache_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=60, max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_a_zero_ttl_caches_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0, max_entries=2)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_rate_limiter_spaces_calls_across_threads() -> None:
    limiter = RateLimiter(rate=20, max_wait_s=5)
    times: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        limiter.acquire()
        with lock:
            times.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times.sort()
    assert times[-1] - times[0] >= 0.15  # 4 intervals of 0.05 s, less thread scheduling jitter


def test_rate_limiter_refuses_a_wait_beyond_its_bound() -> None:
    limiter = RateLimiter(rate=1, max_wait_s=0.5)
    limiter.acquire()
    with pytest.raises(WebSearchError) as caught:
        limiter.acquire()  # the next slot is a second away
    assert caught.value.status == 429 and "client-side rate limit" in caught.value.message


def google_error(code: int, message: str, reason: str | None = None, status: str | None = None) -> dict:
    error = {"code": code, "message": message, "errors": [{"reason": reason}] if reason else []}
    return {"error": error | ({"status": status} if status else {})}


@pytest.mark.parametrize(
    ("parse", "body", "expected"),
    [
        (SerpApi.parse_error, {"error": "Your account has run out of searches."}, True),
        (SerpApi.parse_error, {"error": "Invalid API key."}, False),
        (GoogleCse.parse_error, google_error(403, "Daily Limit Exceeded", reason="dailyLimitExceeded"), True),
        (GoogleCse.parse_error, google_error(429, "Quota exceeded", status="RESOURCE_EXHAUSTED"), True),
        (GoogleCse.parse_error, google_error(400, "API key not valid.", reason="badRequest"), False),
    ],
)
def test_provider_error_bodies_say_whether_a_quota_was_hit(parse, body: dict, expected: bool) -> None:
    message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    assert parse(body) == (message, expected)


@pytest.mark.parametrize("parse", [SerpApi.parse_error, GoogleCse.parse_error])
def test_an_unreadable_error_body_still_gives_a_message(parse) -> None:
    assert parse(None) == ("no error message", False)
    assert parse({"error": 7}) == ("no error message", False)

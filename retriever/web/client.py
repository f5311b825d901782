"""The HTTP side of a web search backend: one JSON GET with a timeout, a client-side rate limit, retries with
exponential backoff on 429/5xx/timeouts, and errors that say which status the retrieval API should answer.

Provider URLs carry the API key as a query parameter, so no URL (nor a transport error's text, which may quote
one) is ever put in a message or a log line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from retriever.metrics import WEB_CALLS

# (message, is_quota) out of a provider's error body; None when the body is not JSON.
ErrorParser = Callable[[Any], tuple[str, bool]]


class WebSearchError(RuntimeError):
    """A web search that failed; `status` is what the API answers: 429 (quota or rate limit), 502 (the provider
    refused or answered nonsense), 503 (unreachable or failing), 504 (timed out)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RateLimiter:
    """At most `rate` calls per second, spaced evenly across threads. A caller that would wait longer than
    `max_wait_s` gets a 429 instead, so the wait is bounded like every other queue."""

    def __init__(self, rate: float, max_wait_s: float) -> None:
        self.interval = 1.0 / rate
        self.max_wait_s = max_wait_s
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            wait = slot - now
            if wait > self.max_wait_s:
                raise WebSearchError(429, f"client-side rate limit: over {1 / self.interval:g} web searches/s queued")
            self._next = slot + self.interval
        if wait > 0:
            time.sleep(wait)


class JsonClient:
    """GET a provider's JSON with retries; `provider` names it in errors, `label` in metrics, `parse_error` reads
    its error bodies."""

    def __init__(
        self,
        provider: str,
        label: str,
        parse_error: ErrorParser,
        *,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        limiter: RateLimiter,
    ) -> None:
        self.provider = provider
        self.label = label
        self.parse_error = parse_error
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.limiter = limiter
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def get(self, url: str, params: dict[str, str | int]) -> Any:
        error: WebSearchError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.limiter.acquire()
            try:
                response = self._http.get(url, params=params)
            except httpx.TimeoutException:
                error = WebSearchError(504, f"{self.provider} did not answer within {self.timeout_s:g} s")
                WEB_CALLS.labels(self.label, "timeout").inc()
                continue
            except httpx.TransportError as exc:
                error = WebSearchError(503, f"{self.provider} is unreachable ({type(exc).__name__})")
                WEB_CALLS.labels(self.label, "unreachable").inc()
                continue
            status = response.status_code
            if status == 200:
                WEB_CALLS.labels(self.label, "ok").inc()
                try:
                    return response.json()
                except ValueError:
                    raise WebSearchError(
                        502, f"{self.provider} answered HTTP 200 with a body that is not JSON"
                    ) from None
            message, quota = self.parse_error(_json_or_none(response))
            if status == 429 or quota:
                WEB_CALLS.labels(self.label, "quota").inc()
                error = WebSearchError(429, f"{self.provider} quota or rate limit hit (HTTP {status}): {message}")
                continue
            if status >= 500:
                WEB_CALLS.labels(self.label, "server_error").inc()
                error = WebSearchError(503, f"{self.provider} failed (HTTP {status}): {message}")
                continue
            WEB_CALLS.labels(self.label, "rejected").inc()
            if status in (401, 403):
                raise WebSearchError(502, f"{self.provider} rejected the API key (HTTP {status}): {message}")
            raise WebSearchError(502, f"{self.provider} refused the search (HTTP {status}): {message}")
        assert error is not None  # the loop runs at least once and either returns, raises or records an error
        raise WebSearchError(error.status, f"{error.message} (after {self.retries + 1} attempts)")

    def close(self) -> None:
        self._http.close()


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None

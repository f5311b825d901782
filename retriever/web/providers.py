"""SerpAPI and Google Custom Search: the request each expects and the results and errors each answers.

SerpAPI (`GET /search.json?engine=google&q=...&api_key=...&num=N`) answers `organic_results[]` with `title`,
`link` and `snippet`, and errors as `{"error": "..."}` (401 bad key, 429 out of searches or over the hourly
limit; a 200 with "hasn't returned any results" is an empty page). Google's Custom Search JSON API
(`GET /customsearch/v1?key=...&cx=...&q=...&num<=10&start=1`) answers `items[]` with the same three fields (no
`items` when nothing matched), and errors as `{"error": {"code", "message", "errors": [{"reason"}], "status"}}`;
quota errors come as 429 (RESOURCE_EXHAUSTED), or as 403 with a rate/daily-limit reason on older projects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retriever.web.client import JsonClient, WebSearchError

GOOGLE_PAGE = 10  # the most results one Custom Search call returns
GOOGLE_MAX_RESULTS = 100  # the API serves no result past the 100th
_GOOGLE_QUOTA_REASONS = {"rateLimitExceeded", "dailyLimitExceeded", "userRateLimitExceeded", "quotaExceeded"}


@dataclass(frozen=True, slots=True)
class WebResult:
    title: str
    snippet: str
    link: str


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _results(rows: Any) -> list[WebResult]:
    if not isinstance(rows, list):
        return []
    results = []
    for row in rows:
        if isinstance(row, dict) and _text(row.get("link")):
            results.append(WebResult(_text(row.get("title")), _text(row.get("snippet")), _text(row["link"])))
    return results


class SerpApi:
    name, label = "SerpAPI", "serpapi"

    def __init__(self, url: str, api_key: str, engine: str = "google") -> None:
        self.url = url
        self.api_key = api_key
        self.engine = engine

    @staticmethod
    def parse_error(body: Any) -> tuple[str, bool]:
        message = _text(body.get("error")) if isinstance(body, dict) else ""
        message = message or "no error message"
        return message, "run out of searches" in message.lower()

    def search(self, client: JsonClient, query: str, count: int) -> list[WebResult]:
        params: dict[str, str | int] = {"engine": self.engine, "q": query, "num": count, "api_key": self.api_key}
        body = client.get(self.url, params)
        if not isinstance(body, dict):
            raise WebSearchError(502, f"{self.name} answered a JSON {type(body).__name__}, not an object")
        if "organic_results" not in body and _text(body.get("error")):
            message = _text(body["error"])
            if "hasn't returned any results" in message:
                return []
            raise WebSearchError(502, f"{self.name} could not search: {message}")
        return _results(body.get("organic_results"))[:count]


class GoogleCse:
    name, label = "Google Custom Search", "google"

    def __init__(self, url: str, api_key: str, cx: str) -> None:
        self.url = url
        self.api_key = api_key
        self.cx = cx

    @staticmethod
    def parse_error(body: Any) -> tuple[str, bool]:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return "no error message", False
        reasons = {e.get("reason") for e in error.get("errors") or [] if isinstance(e, dict)}
        quota = error.get("status") == "RESOURCE_EXHAUSTED" or bool(reasons & _GOOGLE_QUOTA_REASONS)
        return _text(error.get("message")) or "no error message", quota

    def search(self, client: JsonClient, query: str, count: int) -> list[WebResult]:
        """Pages of ten until `count` results (at most 100) or the last page."""
        count = min(count, GOOGLE_MAX_RESULTS)
        results: list[WebResult] = []
        while len(results) < count:
            num = min(GOOGLE_PAGE, count - len(results))
            params: dict[str, str | int] = {
                "q": query, "cx": self.cx, "num": num, "start": len(results) + 1, "key": self.api_key,
            }  # fmt: skip
            body = client.get(self.url, params)
            if not isinstance(body, dict):
                raise WebSearchError(502, f"{self.name} answered a JSON {type(body).__name__}, not an object")
            page = _results(body.get("items"))
            results.extend(page)
            if len(page) < num:
                break
        return results[:count]

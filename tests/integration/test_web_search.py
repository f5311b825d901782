"""The SerpAPI and Google Custom Search backends through the retrieval API, over HTTP on loopback.

The provider is a local HTTP server replaying responses in each provider's JSON format (web_responses/: results,
no results, quota, bad key, backend error), scripted per test, and recording what it was asked. Checked: the
Search-R1 `/retrieve` and `/v1/search` shapes, Google's paging, retries with backoff on 429/5xx then a clear
429/503, no retry and no key echoed on a bad key, the cache sparing a second call, timeouts, the client-side rate
limit, and a missing key stopping `python -m retriever.app` / `searchr1 retriever serve` at startup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from support import ThreadServer, wait_until

from retriever.app import create_app, main
from retriever.settings import RetrieverSettings

RESPONSES = Path(__file__).resolve().parent / "web_responses"
ROOT = Path(__file__).resolve().parents[2]
SERPAPI_KEY = "serp-secret-key-0123456789"
GOOGLE_KEY = "AIzaSy-google-secret-key"
GOOGLE_CX = "017576662512468239146:omuauf_lfve"
SERPAPI_QUERY = "who wrote the origin of species"
GOOGLE_QUERY = "when did the cold war end"


class ReplayProvider:
    """Answers each GET with the next scripted (status, response file, delay), then with `default`; records
    (path, query parameters, arrival time) of every request."""

    def __init__(self, default: tuple[int, str]) -> None:
        self.default = default
        self.script: list[tuple[int, str, float]] = []
        self.requests: list[tuple[str, dict[str, str], float]] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                with provider._lock:
                    provider.requests.append((url.path, dict(parse_qsl(url.query)), time.monotonic()))
                    status, name, delay = provider.script.pop(0) if provider.script else (*provider.default, 0.0)
                time.sleep(delay)
                body = (RESPONSES / name).read_bytes()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ReplayProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def serpapi_settings(provider: ReplayProvider, **overrides: Any) -> RetrieverSettings:
    fast = {"web_retries": 2, "web_backoff_s": 0.01, "web_timeout_s": 2.0, "web_rate_per_s": 1000.0}
    return RetrieverSettings(
        search_backend="serpapi",
        serpapi_api_key=SERPAPI_KEY,
        serpapi_url=f"{provider.url}/search.json",
        **{**fast, **overrides},
    )


def google_settings(provider: ReplayProvider, **overrides: Any) -> RetrieverSettings:
    fast = {"web_retries": 2, "web_backoff_s": 0.01, "web_timeout_s": 2.0, "web_rate_per_s": 1000.0}
    return RetrieverSettings(
        search_backend="google",
        google_api_key=GOOGLE_KEY,
        google_cx=GOOGLE_CX,
        google_url=f"{provider.url}/customsearch/v1",
        **{**fast, **overrides},
    )


def _ready(http: httpx.Client) -> bool:
    return http.get("/readyz").status_code == 200


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(settings) -> an httpx client of the API over that backend, once /readyz answers."""
    with_stack: list[Any] = []

    def start(settings: RetrieverSettings) -> httpx.Client:
        server = ThreadServer(create_app(settings)).__enter__()
        http = httpx.Client(base_url=server.url, timeout=30)
        with_stack.append((server, http))
        wait_until(lambda: _ready(http), 30, "the retriever to load its backend")
        return http

    yield start
    for server, http in with_stack:
        http.close()
        server.__exit__(None, None, None)


def test_serpapi_results_in_search_r1_and_v1_shapes(serve: Any) -> None:
    with ReplayProvider((200, "serpapi_search.json")) as provider:
        http = serve(serpapi_settings(provider))
        scored = http.post("/retrieve", json={"queries": [SERPAPI_QUERY], "topk": 3, "return_scores": True})
        bare = http.post("/retrieve", json={"queries": [SERPAPI_QUERY + "?"], "topk": 2})
        v1 = http.post("/v1/search", json={"queries": [SERPAPI_QUERY + "!"], "topk": 3})
    assert scored.status_code == bare.status_code == v1.status_code == 200
    (results,) = scored.json()["result"]
    assert [set(r) for r in results] == [{"document", "score"}] * 3
    assert results[0]["document"] == {
        "id": "https://en.wikipedia.org/wiki/On_the_Origin_of_Species",
        "contents": '"On the Origin of Species - Wikipedia"\nOn the Origin of Species is a work of scientific '
        "literature by Charles Darwin that is considered to be the foundation of evolutionary biology.",
    }
    assert [r["score"] for r in results] == [1.0, 0.5, pytest.approx(1 / 3)]
    (docs,) = bare.json()["result"]
    assert [set(d) for d in docs] == [{"id", "contents"}] * 2  # the provider's 3 cut to topk
    (hits,) = v1.json()["results"]
    assert hits["hits"][1] == {
        "id": "https://www.britannica.com/biography/Charles-Darwin",
        "title": "Charles Darwin | Biography, Education, Books, Theory ...",
        "text": "Charles Darwin, English naturalist whose scientific theory of evolution by natural selection became "
        "the foundation of modern evolutionary studies.",
        "score": 0.5,
    }
    path, params, _ = provider.requests[0]
    assert path == "/search.json"
    assert params == {"engine": "google", "q": SERPAPI_QUERY, "num": "3", "api_key": SERPAPI_KEY}


def test_google_pages_past_ten_results(serve: Any) -> None:
    with ReplayProvider((200, "google_cse_search.json")) as provider:
        provider.script = [(200, "google_cse_search.json", 0.0), (200, "google_cse_page2.json", 0.0)]
        http = serve(google_settings(provider))
        response = http.post("/v1/search", json={"queries": [GOOGLE_QUERY], "topk": 12})
    assert response.status_code == 200
    hits = response.json()["results"][0]["hits"]
    assert len(hits) == 12
    assert hits[0]["id"] == "https://en.wikipedia.org/wiki/Cold_War" and hits[0]["title"] == "Cold War - Wikipedia"
    assert hits[11]["id"] == "https://en.wikipedia.org/wiki/German_reunification"
    pages = [(p["start"], p["num"]) for _, p, _ in provider.requests]
    assert pages == [("1", "10"), ("11", "2")]
    assert all(
        p["key"] == GOOGLE_KEY and p["cx"] == GOOGLE_CX and p["q"] == GOOGLE_QUERY for _, p, _ in provider.requests
    )


def test_a_query_without_results_gets_an_empty_list(serve: Any) -> None:
    with ReplayProvider((200, "serpapi_no_results.json")) as provider:
        http = serve(serpapi_settings(provider))
        response = http.post("/retrieve", json={"queries": ["qwxzv plorf 99182 zzyqv"]})
    assert response.status_code == 200 and response.json() == {"result": [[]]}


def test_quota_is_retried_with_backoff_then_answered_429(serve: Any) -> None:
    with ReplayProvider((429, "google_cse_quota.json")) as provider:
        http = serve(google_settings(provider, web_backoff_s=0.1))
        response = http.post("/retrieve", json={"queries": [GOOGLE_QUERY]})
    assert response.status_code == 429
    detail = response.json()["detail"]
    assert "Google Custom Search quota or rate limit hit (HTTP 429): Quota exceeded" in detail
    assert "after 3 attempts" in detail
    times = [t for _, _, t in provider.requests]
    assert len(times) == 3  # one call and two retries
    assert times[1] - times[0] >= 0.08 and times[2] - times[1] >= 0.17  # backoff doubles


def test_a_rate_limit_that_clears_is_invisible_to_the_client(serve: Any) -> None:
    with ReplayProvider((200, "serpapi_search.json")) as provider:
        provider.script = [(429, "serpapi_out_of_searches.json", 0.0)]
        http = serve(serpapi_settings(provider))
        response = http.post("/retrieve", json={"queries": [SERPAPI_QUERY]})
    assert response.status_code == 200 and len(response.json()["result"][0]) == 3
    assert len(provider.requests) == 2


def test_provider_failures_are_retried_then_answered_503(serve: Any) -> None:
    with ReplayProvider((503, "google_cse_backend_error.json")) as provider:
        http = serve(google_settings(provider))
        response = http.post("/v1/search", json={"queries": [GOOGLE_QUERY]})
    assert response.status_code == 503
    assert "Google Custom Search failed (HTTP 503): The service is currently unavailable." in response.json()["detail"]
    assert len(provider.requests) == 3


@pytest.mark.parametrize(
    ("backend", "status", "response", "message"),
    [
        ("google", 400, "google_cse_bad_key.json", "refused the search (HTTP 400): API key not valid."),
        ("serpapi", 401, "serpapi_invalid_key.json", "rejected the API key (HTTP 401): Invalid API key."),
    ],
)
def test_a_rejected_key_is_not_retried_nor_echoed(
    serve: Any, backend: str, status: int, response: str, message: str
) -> None:
    with ReplayProvider((status, response)) as provider:
        settings = google_settings(provider) if backend == "google" else serpapi_settings(provider)
        http = serve(settings)
        answer = http.post("/retrieve", json={"queries": ["anything"]})
    assert answer.status_code == 502
    assert message in answer.json()["detail"]
    assert GOOGLE_KEY not in answer.text and SERPAPI_KEY not in answer.text
    assert len(provider.requests) == 1


def test_the_cache_spares_a_second_provider_call_until_it_expires(serve: Any) -> None:
    with ReplayProvider((200, "serpapi_search.json")) as provider:
        http = serve(serpapi_settings(provider, web_cache_ttl_s=0.5))
        body = {"queries": [SERPAPI_QUERY, SERPAPI_QUERY], "topk": 3}  # the same query twice in one batch
        first = http.post("/retrieve", json=body).json()
        assert len(provider.requests) == 1
        assert http.post("/retrieve", json=body).json() == first
        assert len(provider.requests) == 1  # answered from the cache
        http.post("/retrieve", json={"queries": [SERPAPI_QUERY], "topk": 2})
        assert len(provider.requests) == 2  # another topk is another search
        time.sleep(0.6)
        http.post("/retrieve", json=body)
        assert len(provider.requests) == 3  # expired


def test_a_slow_provider_times_out(serve: Any) -> None:
    with ReplayProvider((200, "serpapi_search.json")) as provider:
        provider.script = [(200, "serpapi_search.json", 3.0)] * 2
        http = serve(serpapi_settings(provider, web_timeout_s=0.3, web_retries=1))
        started = time.monotonic()
        response = http.post("/retrieve", json={"queries": [SERPAPI_QUERY]})
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["detail"] == "SerpAPI did not answer within 0.3 s (after 2 attempts)"
    assert len(provider.requests) == 2
    assert elapsed < 2.0  # two 0.3 s timeouts, not the provider's 3 s


def test_calls_are_spaced_by_the_client_side_rate_limit(serve: Any) -> None:
    with ReplayProvider((200, "serpapi_search.json")) as provider:
        http = serve(serpapi_settings(provider, web_rate_per_s=10.0, web_concurrency=4))
        response = http.post("/retrieve", json={"queries": [f"query {i}" for i in range(4)]})
    assert response.status_code == 200
    times = sorted(t for _, _, t in provider.requests)
    assert len(times) == 4
    assert times[-1] - times[0] >= 0.22  # 3 intervals of 0.1 s even with 4 threads (less some network jitter)


def test_missing_key_stops_the_server_at_startup(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for name in list(os.environ):
        if name.startswith("SEARCHR1_"):
            monkeypatch.delenv(name)
    assert main(["--backend", "serpapi"]) == 2
    assert "search_backend=serpapi needs SEARCHR1_SERPAPI_API_KEY" in capsys.readouterr().err


@pytest.mark.slow
def test_searchr1_retriever_serve_names_the_missing_google_settings() -> None:
    script = shutil.which("searchr1") or str(ROOT / ".venv" / "bin" / "searchr1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHR1_")}
    env["SEARCHR1_GOOGLE_API_KEY"] = GOOGLE_KEY
    result = subprocess.run(
        [script, "retriever", "serve", "--backend", "google"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "search_backend=google needs SEARCHR1_GOOGLE_API_KEY (the API key) and SEARCHR1_GOOGLE_CX" in result.stderr
    assert GOOGLE_KEY not in result.stderr

"""Prometheus metrics of the retrieval tier (names are API: dashboards use them)."""

from __future__ import annotations

from services.telemetry import counter, gauge, histogram

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

REQUEST_SECONDS = histogram(
    "searchr1_retriever_request_seconds", "Time to answer one HTTP request", ["endpoint"], buckets=_LATENCY_BUCKETS
)
REQUESTS = counter("searchr1_retriever_requests_total", "HTTP requests answered", ["endpoint", "status"])
QUERIES = counter("searchr1_retriever_queries_total", "Queries searched", ["mode"])
BATCH_QUERIES = histogram(
    "searchr1_retriever_batch_queries",
    "Queries per coalesced encoder batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_SECONDS = histogram(
    "searchr1_retriever_batch_seconds", "Time per batch and phase", ["phase"], buckets=_LATENCY_BUCKETS
)
PENDING_REQUESTS = gauge("searchr1_retriever_pending_requests", "Requests waiting for the encoder")
INDEX_PASSAGES = gauge("searchr1_retriever_index_passages", "Passages in the loaded index")
WEB_CALLS = counter(
    "searchr1_retriever_web_calls_total", "Calls to a web search provider, by outcome", ["provider", "outcome"]
)
WEB_CACHE = counter("searchr1_retriever_web_cache_total", "Web search cache lookups", ["result"])

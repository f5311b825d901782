"""Rerank stage: answer recall@3 with and without the cross-encoder, and the latency it adds per query.

The baseline is the local backend as served today: exact dense search (all-MiniLM-L6-v2, embedded Qdrant) over a
subset of the shared corpus, top 3. Ours is the rerank backend: the same search for `--candidates` passages, then
the cross-encoder keeps the best 3. Both run in this process on the same questions of the shared eval sets, in
batches of `--batch` queries (as the API's coalescer hands them over) and one query at a time.

The production cross-encoder (cross-encoder/ms-marco-MiniLM-L12-v2) is used when it can be loaded (a local
folder via --model, or the Hugging Face cache); without it (no internet here, and no wheel on PyPI carries one)
the bench falls back to the tiny random cross-encoder and says so: its recall figures measure the mechanics,
NOT a real model, while its latency is a lower bound (a real 12-layer MiniLM costs more per pair).

    python -m bench.rerank [--passages 3000] [--questions 200] [--sets nq,hotpotqa] [--candidates 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.qa import ROOT, answer_recall, corpus_subset, load_questions, require_shared_data

WORK = ROOT / "var" / "bench-retriever"  # shares bench.retriever's embedding cache
K = 3


def _timed_batches(search: Callable[[list[str]], list[list[str]]], queries: Sequence[str], batch: int):
    """(ids per query, seconds per query) over batches of `batch` queries."""
    found: list[list[str]] = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        found.extend(search(list(queries[start : start + batch])))
    return found, (time.perf_counter() - started) / max(1, len(queries))


def _single_latencies(search: Callable[[list[str]], list[list[str]]], queries: Sequence[str]) -> np.ndarray:
    latencies = []
    for query in queries:
        started = time.perf_counter()
        search([query])
        latencies.append(time.perf_counter() - started)
    return np.asarray(latencies) * 1000


def _load_reranker(model: str | None, batch_size: int):
    """(reranker, name, is_real): the model asked for, else the production one if cached, else the tiny random
    one."""
    from retriever.rerank import CrossEncoderReranker
    from retriever.settings import DEFAULT_RERANK_MODEL
    from services.models import TINY_CROSS_ENCODER

    if model is not None:
        return CrossEncoderReranker(model, batch_size=batch_size), model, model != TINY_CROSS_ENCODER
    try:
        return CrossEncoderReranker(DEFAULT_RERANK_MODEL, batch_size=batch_size), DEFAULT_RERANK_MODEL, True
    except OSError as exc:
        print(f"{DEFAULT_RERANK_MODEL} cannot be loaded here ({type(exc).__name__}); using {TINY_CROSS_ENCODER}")
        return CrossEncoderReranker(TINY_CROSS_ENCODER, batch_size=batch_size), TINY_CROSS_ENCODER, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rerank", description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=3000, help="corpus subset size (the first N passages)")
    parser.add_argument("--questions", type=int, default=200, help="questions per eval set")
    parser.add_argument("--sets", default="nq,hotpotqa", help="comma-separated eval sets (bench.qa.EVAL_FILES)")
    parser.add_argument("--candidates", type=int, default=20, help="passages rescored per query")
    parser.add_argument("--batch", type=int, default=64, help="queries per batch")
    parser.add_argument("--pairs", type=int, default=64, help="query/passage pairs per cross-encoder pass")
    parser.add_argument("--single", type=int, default=32, help="queries timed one at a time")
    parser.add_argument("--model", help="cross-encoder (HF id, folder or registry name); default: see above")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    require_shared_data()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from retriever.build import build_index
    from retriever.corpus import read_corpus
    from retriever.rerank import RerankingSearcher
    from retriever.search import SearchItem, load_searcher
    from retriever.settings import RetrieverSettings

    torch.set_num_threads(args.threads)
    corpus = corpus_subset(args.passages, WORK)
    texts = {r.passage.id: r.passage.contents for r in read_corpus(corpus)}
    reranker, model_name, real = _load_reranker(args.model, args.pairs)
    print(f"rerank benchmark: {len(texts)} passages, all-MiniLM-L6-v2 exact dense search, top {args.candidates} "
          f"rescored by {model_name}, {args.threads} torch thread(s), {os.cpu_count()} CPUs")  # fmt: skip
    if not real:
        print("!! the cross-encoder is the tiny RANDOM test model: recall figures below are NOT a real model's;\n"
              "!! they check the mechanics (same candidates, reordered). Latency is a lower bound.")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        index_dir = Path(tmp) / "index"
        report = build_index(corpus, index_dir, cache_path=WORK / "embeddings.sqlite", progress=False)
        print(f"index build: {report.seconds:.1f} s ({report.encoded} embeddings computed)")
        searcher = load_searcher(RetrieverSettings(index_dir=index_dir, exact=True))
        reranking = RerankingSearcher(searcher, reranker, args.candidates)

        def plain(queries: list[str], k: int = K) -> list[list[str]]:
            return [[h.passage.id for h in hits] for hits in searcher.search(queries, topk=k)]

        def rerank(queries: list[str]) -> list[list[str]]:
            hits = reranking.search_items([SearchItem(q, K) for q in queries])
            return [[h.passage.id for h in row] for row in hits]

        try:
            rerank(["warm up"]), plain(["warm up"])
            rows = []
            for name in args.sets.split(","):
                questions = load_questions(name, args.questions)
                queries = [q["question"] for q in questions]
                base_ids, base_s = _timed_batches(plain, queries, args.batch)
                ours_ids, ours_s = _timed_batches(rerank, queries, args.batch)
                pool_ids, _ = _timed_batches(lambda qs: plain(qs, args.candidates), queries, args.batch)
                rows.append((
                    name, len(questions),
                    answer_recall(base_ids, questions, texts, K),
                    answer_recall(ours_ids, questions, texts, K),
                    answer_recall(pool_ids, questions, texts, args.candidates),
                    base_s * 1000, ours_s * 1000,
                ))  # fmt: skip
            singles = [q["question"] for q in load_questions(args.sets.split(",")[0], args.single)]
            base_single, ours_single = _single_latencies(plain, singles), _single_latencies(rerank, singles)
        finally:
            reranking.close()

    print(f"\nanswer recall@{K} over this subset: rerank vs local (ratio); recall@{args.candidates} of the candidates "
          f"bounds what a perfect reranker could reach")  # fmt: skip
    for name, n, base, ours, pool, base_ms, ours_ms in rows:
        ratio = f"{ours / base:.2f}x" if base else "n/a"
        print(f"  {name:9s} {n:4d} questions: rerank {ours:.3f} vs local {base:.3f} ({ratio}); "
              f"candidates@{args.candidates} {pool:.3f}; batches of {args.batch}: {ours_ms:6.2f} vs {base_ms:6.2f} "
              f"ms/query (+{ours_ms - base_ms:.2f} ms)")  # fmt: skip
    b50, o50 = float(np.median(base_single)), float(np.median(ours_single))
    b99, o99 = float(np.percentile(base_single, 99)), float(np.percentile(ours_single, 99))
    print(f"one query at a time ({len(singles)} queries): p50 rerank {o50:.1f} ms vs local {b50:.1f} ms "
          f"(+{o50 - b50:.1f} ms, {o50 / b50:.1f}x); p99 {o99:.1f} vs {b99:.1f} ms")  # fmt: skip
    if not real:
        print("(recall with a RANDOM cross-encoder: not a real model's figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

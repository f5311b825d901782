"""Retrieval quality: answer recall@1/3/5 of dense, BM25 and hybrid search over the whole shared corpus.

A question counts as recalled at k when one of its top-k passages contains a normalised gold answer (the
coverage rule of ../shared/data/README.md). The index is our embedded Qdrant build of all 30,053 passages with
all-MiniLM-L6-v2 and BM25; the baseline is the reference's retrieval, a flat exact inner product over the same
embeddings in numpy, which our exact dense mode must match. HNSW dense is also measured, to show what the
approximate index costs. The first run encodes the corpus (minutes on a small CPU; cached by content hash in
var/bench-retriever, shared with bench.retriever), later runs only encode the questions.

    python -m bench.retrieval_quality [--sets nq,hotpotqa,2wiki,musique] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.qa import CORPUS, ROOT, answer_recall, load_questions, require_shared_data

if TYPE_CHECKING:
    from retriever.search import Searcher

WORK = ROOT / "var" / "bench-retriever"
KS = (1, 3, 5)
BATCH = 256
Search = Callable[[Sequence[str]], list[list[str]]]


def _batched(search: Search, queries: Sequence[str]) -> list[list[str]]:
    found: list[list[str]] = []
    for start in range(0, len(queries), BATCH):
        found.extend(search(queries[start : start + BATCH]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="nq,hotpotqa,2wiki,musique", help="comma-separated eval sets")
    parser.add_argument("--limit", type=int, help="questions per set (default: all)")
    parser.add_argument("--index", type=Path, default=WORK / "index-full", help="where the full index is built")
    args = parser.parse_args(argv)
    require_shared_data()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retriever.build import build_index
    from retriever.cache import EmbeddingCache
    from retriever.corpus import read_corpus
    from retriever.search import load_searcher
    from retriever.settings import RetrieverSettings

    WORK.mkdir(parents=True, exist_ok=True)
    cache_path = WORK / "embeddings.sqlite"
    report = build_index(CORPUS, args.index, cache_path=cache_path)
    print(f"index: {report.passages} passages ({report.encoded} embeddings computed this run)", flush=True)

    passages = [record.passage for record in read_corpus(CORPUS)]
    texts = {p.id: p.contents for p in passages}
    exact = load_searcher(RetrieverSettings(index_dir=args.index, exact=True))
    hnsw = load_searcher(RetrieverSettings(index_dir=args.index, exact=False))
    encoder = exact.dense
    cache = EmbeddingCache(cache_path, encoder.spec.name, encoder.dim)
    try:
        matrix, _ = cache.get_or_compute(
            encoder.passage_inputs([p.contents for p in passages]), encoder.encode_passage_inputs
        )
    finally:
        cache.close()
    ids = np.array([p.id for p in passages])

    def flat_inner_product(queries: Sequence[str]) -> list[list[str]]:
        scores = encoder.encode_queries(queries) @ matrix.T
        top = np.argpartition(-scores, max(KS), axis=1)[:, : max(KS)]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
        return ids[order].tolist()

    def ours(searcher: Searcher, mode: str) -> Search:
        return lambda queries: [[hit.passage.id for hit in hits] for hits in searcher.search(queries, max(KS), mode)]

    methods: dict[str, Search] = {
        "baseline: flat IP (reference)": flat_inner_product,
        "dense exact": ours(exact, "dense"),
        "dense HNSW": ours(hnsw, "dense"),
        "BM25": ours(exact, "sparse"),
        "hybrid RRF (exact)": ours(exact, "hybrid"),
    }
    header = f"{'set':9s} {'n':>5s}  {'method':30s} " + " ".join(f"R@{k:<4d}" for k in KS) + "  q/s"
    print(header)
    recall3: dict[str, list[float]] = {name: [] for name in methods}
    for name in args.sets.split(","):
        questions = load_questions(name, args.limit)
        queries = [q["question"] for q in questions]
        for method, search in methods.items():
            started = time.perf_counter()
            found = _batched(search, queries)
            rate = len(queries) / (time.perf_counter() - started)
            recalls = [answer_recall(found, questions, texts, k) for k in KS]
            recall3[method].append(recalls[1])
            cells = " ".join(f"{r:6.3f}" for r in recalls)
            print(f"{name:9s} {len(questions):5d}  {method:30s} {cells}  {rate:5.0f}", flush=True)
    exact.close()
    hnsw.close()
    base = np.mean(recall3["baseline: flat IP (reference)"])
    print("\nmean recall@3 over the sets, and the ratio to the reference's flat inner product:")
    for method, values in recall3.items():
        print(f"  {method:30s} {np.mean(values):.3f} ({np.mean(values) / base:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

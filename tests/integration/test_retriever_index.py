"""The index on real engines (qdrant-edge, qdrant-client local mode) over the test corpus (datakit): search
modes, hybrid fusion, backend parity, resumable builds without duplicates, and builds that refuse bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from datakit import N_PASSAGES, corpus_in_use
from qdrant_client import QdrantClient, models
from retriever_testkit import cache_path, encoder, write_corpus

from retriever.build import BuildError, build_index, main
from retriever.corpus import CorpusError, Passage, read_corpus
from retriever.encoders import Bm25Encoder, Bm25Params
from retriever.index import EdgeIndex, IndexQuery, QdrantClientIndex
from retriever.index.base import RRF_K
from retriever.manifest import IndexNotReadyError
from retriever.search import Searcher, SearchItem, read_manifest

pytestmark = pytest.mark.slow
CORPUS = corpus_in_use()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", CORPUS.lines)


@pytest.fixture(scope="module")
def passages(corpus: Path) -> list[Passage]:
    return [record.passage for record in read_corpus(corpus)]


@pytest.fixture(scope="module")
def edge(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Searcher]:
    folder = tmp_path_factory.mktemp("edge-index")
    report = build_index(corpus, folder, dense=encoder(), cache_path=cache_path(tmp_path_factory), progress=False)
    assert report.passages == N_PASSAGES
    searcher = Searcher(EdgeIndex(folder), encoder(), Bm25Encoder())
    yield searcher
    searcher.close()


@pytest.fixture(scope="module")
def local(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Searcher]:
    index = QdrantClientIndex(QdrantClient(":memory:"), "passages")
    folder = tmp_path_factory.mktemp("client-index")
    build_index(corpus, folder, index=index, dense=encoder(), cache_path=cache_path(tmp_path_factory), progress=False)
    searcher = Searcher(index, encoder(), Bm25Encoder())
    yield searcher
    searcher.close()


def _opening_words(passage: Passage, n: int = 12) -> str:
    return " ".join(passage.text.split()[:n])


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
@pytest.mark.parametrize("backend", ["edge", "local"])
def test_a_passage_is_found_by_its_opening_words(
    backend: str, mode: str, passages: list[Passage], request: pytest.FixtureRequest
) -> None:
    searcher: Searcher = request.getfixturevalue(backend)
    sample = passages[::10]
    results = searcher.search([_opening_words(p) for p in sample], topk=3, mode=mode)  # type: ignore[arg-type]
    assert all(len(hits) == 3 for hits in results)
    top1 = sum(hits[0].passage.id == p.id for p, hits in zip(sample, results, strict=True))
    assert top1 >= 0.9 * len(sample), f"{mode} on {backend}: {top1}/{len(sample)} found first"
    hit = results[0][0]
    assert hit.passage == sample[0]
    assert all(a.score >= b.score for hits in results for a, b in pairwise(hits))


def test_both_backends_give_the_same_exact_dense_results(edge: Searcher, local: Searcher) -> None:
    queries = [CORPUS.question, *CORPUS.queries]
    edge.exact = True
    try:
        ours = edge.search(queries, topk=5)
    finally:
        edge.exact = False
    theirs = local.search(queries, topk=5)
    assert [[h.passage.id for h in hits] for hits in ours] == [[h.passage.id for h in hits] for hits in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_hybrid_is_reciprocal_rank_fusion_of_the_dense_and_bm25_rankings(edge: Searcher) -> None:
    prefetch, k = 20, 5
    edge.hybrid_prefetch = prefetch
    queries = [CORPUS.query, *CORPUS.queries]
    for query in queries:
        dense = edge.search([query], topk=prefetch, mode="dense")[0]
        sparse = edge.search([query], topk=prefetch, mode="sparse")[0]
        expected: dict[str, float] = {}
        for ranking in (dense, sparse):
            for rank, hit in enumerate(ranking):  # Qdrant counts ranks from 0: score 1 / (k + rank)
                expected[hit.passage.id] = expected.get(hit.passage.id, 0.0) + 1.0 / (RRF_K + rank)
        hybrid = edge.search([query], topk=k, mode="hybrid")[0]
        assert [h.score for h in hybrid] == pytest.approx([expected[h.passage.id] for h in hybrid], abs=1e-6)
        best = sorted(expected.values(), reverse=True)[:k]
        assert [h.score for h in hybrid] == pytest.approx(best, abs=1e-6)  # the top k of the fusion, in order
        in_both = {h.passage.id for h in dense} & {h.passage.id for h in sparse}
        if in_both:
            assert hybrid[0].passage.id in in_both


def test_one_batch_mixes_modes_and_topk(edge: Searcher) -> None:
    items = [
        SearchItem(CORPUS.query, 1, "dense"),
        SearchItem(CORPUS.queries[1], 4, "sparse"),
        SearchItem("x y", 2, "hybrid"),
    ]
    results = edge.search_items(items)
    assert [len(hits) for hits in results] == [1, 4, 2]
    (alone,) = edge.search([CORPUS.query], topk=1)[0]  # encoded in a batch of its own: other padding, other rounding
    assert results[0][0].passage == alone.passage and results[0][0].score == pytest.approx(alone.score, abs=1e-6)


def test_stop_word_only_queries_return_nothing_sparse_and_dense_hits_hybrid(edge: Searcher) -> None:
    sparse, hybrid = edge.search(["the of", ""], topk=3, mode="sparse"), edge.search(["the of"], topk=3, mode="hybrid")
    assert sparse == [[], []]
    assert len(hybrid[0]) == 3


class CrashingIndex(EdgeIndex):
    """An embedded index whose process 'dies' on the n-th upsert."""

    def __init__(self, folder: Path, crash_on: int) -> None:
        super().__init__(folder)
        self.upserts, self.crash_on = 0, crash_on

    def upsert(self, *args: object, **kwargs: object) -> None:
        self.upserts += 1
        if self.upserts == self.crash_on:
            raise RuntimeError("simulated crash")
        super().upsert(*args, **kwargs)  # type: ignore[arg-type]


def test_an_interrupted_build_resumes_without_duplicates_or_re_encoding(corpus: Path, tmp_path: Path) -> None:
    n, batch = 48, 8
    small = write_corpus(tmp_path / "small.jsonl", CORPUS.lines[:n])
    folder, cache = tmp_path / "index", tmp_path / "cache.sqlite"
    crashing = CrashingIndex(folder, crash_on=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(small, folder, index=crashing, dense=encoder(), batch_size=batch, checkpoint_every=16,
                    cache_path=cache, progress=False)  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["state"], manifest["committed_lines"]) == ("building", 16)
    assert crashing.count() == 24  # one batch past the checkpoint is in the index already
    with pytest.raises(IndexNotReadyError, match="stopped at corpus line 16: run the build again"):
        read_manifest(crashing)
    crashing.close()

    index = EdgeIndex(folder)
    report = build_index(
        small, folder, index=index, dense=encoder(), batch_size=batch, cache_path=cache, progress=False
    )
    assert (report.resumed_from_line, report.indexed, report.passages) == (16, n - 16, n)
    assert report.encoded == n - 4 * batch  # the crashed batch was encoded (and cached) before its upsert
    assert index.count() == n  # re-upserted batch 3 replaced its points: deterministic ids
    assert read_manifest(index).state == "complete"
    again = build_index(small, folder, index=index, dense=encoder(), cache_path=cache, progress=False)
    assert again.already_complete and index.count() == n
    index.close()


def test_a_malformed_line_stops_the_build_and_leaves_it_unfinished(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lines = [*CORPUS.lines[:40], '{"id": "bad", "contents": 42}', *CORPUS.lines[40:50]]
    bad = write_corpus(tmp_path / "bad.jsonl", lines)
    index = EdgeIndex(tmp_path / "index")
    with pytest.raises(CorpusError, match=r"bad.jsonl:41: 'contents' must be a non-empty string"):
        build_index(bad, tmp_path / "index", index=index, dense=encoder(), batch_size=16,
                    cache_path=cache_path(tmp_path_factory), progress=False)  # fmt: skip
    with pytest.raises(IndexNotReadyError, match="stopped at corpus line 32"):
        read_manifest(index)
    index.close()


def test_the_build_command_reports_bad_input_and_refuses_another_model(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("retriever.build.configure_logging", lambda *args: None)  # keep pytest's log capture
    bad = write_corpus(tmp_path / "bad.jsonl", [CORPUS.lines[0], "not json"])
    assert main(["--corpus", str(bad), "--index", str(tmp_path / "i"), "--no-progress"]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["--corpus", str(tmp_path / "missing.jsonl"), "--index", str(tmp_path / "i")]) == 2
    assert "does not exist" in capsys.readouterr().err

    good = write_corpus(tmp_path / "good.jsonl", CORPUS.lines[:20])
    args = ["--corpus", str(good), "--index", str(tmp_path / "g"), "--no-progress"]
    assert main([*args, "--cache", str(cache_path(tmp_path_factory))]) == 0
    assert "index: 20 passages, built in" in capsys.readouterr().out
    with pytest.raises(BuildError, match=r"built with bm25=.*pass force=True"):
        build_index(good, tmp_path / "g", dense=encoder(), bm25=Bm25Params(k=2.0), progress=False)
    report = build_index(good, tmp_path / "g", dense=encoder(), bm25=Bm25Params(k=2.0), force=True, progress=False,
                         cache_path=cache_path(tmp_path_factory))  # fmt: skip
    assert (report.passages, report.encoded) == (20, 0)


def test_a_limited_build_indexes_the_first_passages(
    corpus: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    index = QdrantClientIndex(QdrantClient(path=str(tmp_path / "qdrant")), "limited")
    report = build_index(corpus, tmp_path, index=index, dense=encoder(), limit=25, batch_size=10,
                         cache_path=cache_path(tmp_path_factory), progress=False)  # fmt: skip
    assert report.passages == 25 == index.count()
    assert read_manifest(index).limit == 25
    hits = index.query([IndexQuery(limit=1, dense=encoder().encode_queries([CORPUS.query])[0])])
    assert hits[0][0].passage.id in {str(i) for i in range(25)}
    index.close()


def test_a_collection_searchr1_did_not_build_is_only_replaced_when_forced(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    client.create_collection("theirs", vectors_config=models.VectorParams(size=3, distance=models.Distance.COSINE))
    index = QdrantClientIndex(client, "theirs")
    corpus = write_corpus(tmp_path / "c.jsonl", CORPUS.lines[:5])
    with pytest.raises(BuildError, match="holds data that searchr1 did not build; pass force=True"):
        build_index(corpus, tmp_path, index=index, dense=encoder(), progress=False)
    assert client.count("theirs").count == 0 and client.collection_exists("theirs")
    report = build_index(corpus, tmp_path, index=index, dense=encoder(), force=True, progress=False)
    assert report.passages == 5

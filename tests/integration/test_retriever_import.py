"""Importing precomputed vectors (the reference's faiss flat index, .npy, raw memmap) into the real embedded
Qdrant engine: the same top-k as searching the faiss index directly, counts checked before anything is written,
and an interrupted import that resumes to exactly the corpus's count."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from retriever.build import BuildError
from retriever.importer import import_vectors, main
from retriever.index import EdgeIndex, IndexQuery
from retriever.manifest import IndexManifest
from retriever.options import PROFILES
from retriever.search import read_manifest
from retriever.vectors import open_vectors

N, DIM = 300, 32
MODEL = "test-vectors"


def _corpus(path: Path, n: int = N) -> Path:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(500)]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            text = " ".join(rng.choice(words, 12))
            handle.write(json.dumps({"id": str(i), "contents": f'"Title {i}"\n{text}'}) + "\n")
    return path


def _vectors(n: int = N) -> np.ndarray:
    """Clustered, unnormalised vectors: inner product ranks them differently from cosine, as faiss's IP does."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(8, DIM))
    return (centres[rng.integers(0, 8, n)] + 0.7 * rng.normal(size=(n, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reference-artefacts")
    vectors = _vectors()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    faiss.write_index(flat, str(folder / "e5_Flat.index"))
    np.save(folder / "emb.npy", vectors)
    vectors.tofile(folder / "emb_e5.memmap")
    return {
        "corpus": _corpus(folder / "corpus.jsonl"),
        "faiss": folder / "e5_Flat.index",
        "npy": folder / "emb.npy",
        "memmap": folder / "emb_e5.memmap",
    }


def _queries() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(20, DIM)).astype(np.float32)


@pytest.mark.parametrize("kind", ["faiss", "npy", "memmap"])
def test_an_imported_index_gives_the_faiss_index_top_k(kind: str, artefacts: dict[str, Path], tmp_path: Path) -> None:
    report = import_vectors(
        artefacts["corpus"], artefacts[kind], tmp_path, model=MODEL, dim=DIM, batch_size=64, progress=False
    )
    assert report.passages == N and report.imported == N
    flat = faiss.read_index(str(artefacts["faiss"]))
    scores, rows = flat.search(_queries(), 5)
    index = EdgeIndex(tmp_path)
    try:
        manifest = read_manifest(index)
        assert manifest.vectors is not None and manifest.vectors.kind == kind and manifest.vectors.count == N
        assert manifest.dense_model == MODEL and manifest.dense_dim == DIM
        for exact in (True, False):
            results = index.query([IndexQuery(limit=5, dense=q, exact=exact) for q in _queries()])
            assert [[int(hit.passage.id) for hit in hits] for hits in results] == rows.tolist()
            np.testing.assert_allclose([[hit.score for hit in hits] for hits in results], scores, rtol=1e-4)
        assert results[0][0].passage.title == f"Title {rows[0][0]}"
    finally:
        index.close()


def test_a_count_mismatch_is_refused_before_anything_is_written(artefacts: dict[str, Path], tmp_path: Path) -> None:
    short = _corpus(tmp_path / "short.jsonl", N - 1)
    with pytest.raises(BuildError, match=rf"holds {N} vectors but .*short.jsonl has {N - 1} passages"):
        import_vectors(short, artefacts["faiss"], tmp_path / "index", model=MODEL, progress=False)
    assert not (tmp_path / "index").exists()


class _Interrupting:
    """A vector source that is interrupted (Ctrl-C), once, when a chunk starting at row `at` is read."""

    def __init__(self, path: Path, at: int) -> None:
        self.inner = open_vectors(path)
        self.kind, self.path, self.count, self.dim = self.inner.kind, path, self.inner.count, self.inner.dim
        self.at: int | None = at

    def read(self, start: int, stop: int) -> np.ndarray:
        if start == self.at:
            self.at = None
            raise KeyboardInterrupt
        return self.inner.read(start, stop)


def test_an_interrupted_import_resumes_to_exactly_the_corpus_count(artefacts: dict[str, Path], tmp_path: Path) -> None:
    source = _Interrupting(artefacts["npy"], at=200)
    kwargs = {"model": MODEL, "batch_size": 50, "checkpoint_every": 100, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        import_vectors(artefacts["corpus"], source, tmp_path, **kwargs)  # type: ignore[arg-type]
    partial = IndexManifest.model_validate_json((tmp_path / "manifest.json").read_text())
    assert partial.state == "building" and partial.committed_rows == 200 and partial.passages == 200
    report = import_vectors(artefacts["corpus"], source, tmp_path, **kwargs)  # type: ignore[arg-type]
    assert report.resumed_from_row == 200 and report.imported == N - 200
    assert report.passages == N
    index = EdgeIndex(tmp_path)
    try:
        assert index.count() == N and read_manifest(index).state == "complete"
        # every passage is its own nearest neighbour under its own vector: no row was shifted by the resume
        vectors = np.load(artefacts["npy"])
        results = index.query([IndexQuery(limit=1, dense=v / np.linalg.norm(v), exact=True) for v in vectors])
        expected = faiss.read_index(str(artefacts["faiss"])).search(
            vectors / np.linalg.norm(vectors, axis=1)[:, None], 1
        )
        assert [int(hits[0].passage.id) for hits in results] == expected[1][:, 0].tolist()
    finally:
        index.close()
    again = import_vectors(artefacts["corpus"], source, tmp_path, **kwargs)  # type: ignore[arg-type]
    assert again.already_complete and again.imported == 0


def test_a_resume_with_other_options_is_refused(artefacts: dict[str, Path], tmp_path: Path) -> None:
    import_vectors(artefacts["corpus"], artefacts["npy"], tmp_path, model=MODEL, progress=False)
    with pytest.raises(BuildError, match="options"):
        import_vectors(
            artefacts["corpus"], artefacts["npy"], tmp_path, model=MODEL, options=PROFILES["int8"], progress=False
        )


def test_the_import_command_says_what_is_wrong(
    artefacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ivf = faiss.index_factory(DIM, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(_vectors())
    faiss.write_index(ivf, str(tmp_path / "ivf.index"))
    l2 = faiss.IndexFlatL2(DIM)
    faiss.write_index(l2, str(tmp_path / "l2.index"))
    (tmp_path / "vectors.txt").write_text("1 2 3")
    cases = {
        str(tmp_path / "ivf.index"): "keeps no exact vectors",
        str(tmp_path / "l2.index"): "not inner product",
        str(tmp_path / "vectors.txt"): "unknown vector file type",
        str(artefacts["memmap"]): "pass its dimension",
        str(tmp_path / "missing.npy"): "does not exist",
    }
    for vectors, reason in cases.items():
        code = main(["--corpus", str(artefacts["corpus"]), "--vectors", vectors, "--model", MODEL,
                     "--index", str(tmp_path / "i"), "--no-progress"])  # fmt: skip
        assert code == 2 and reason in capsys.readouterr().err, vectors
    code = main(["--corpus", str(artefacts["corpus"]), "--vectors", str(artefacts["npy"]), "--model", MODEL,
                 "--index", str(tmp_path / "i"), "--profile", "huge"])  # fmt: skip
    assert code == 2 and "unknown index profile 'huge'" in capsys.readouterr().err
    code = main(["--corpus", str(artefacts["corpus"]), "--vectors", str(artefacts["npy"]), "--model", MODEL,
                 "--index", str(tmp_path / "i"), "--profile", "binary", "--option", "hnsw_m=8",
                 "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest = IndexManifest.model_validate_json((tmp_path / "i" / "manifest.json").read_text())
    assert manifest.options.quantization == "binary" and manifest.options.hnsw_m == 8

"""Shared pieces of the retriever tests: the shared corpus subset and one loaded encoder per session.

Test modules wrap these in their own fixtures; the embedding cache lives in the session's base temp folder, so
each passage is encoded once per session however many indexes the tests build.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = SHARED_DATA / "corpus" / "corpus.jsonl"
N_PASSAGES = 200

needs_corpus = pytest.mark.skipif(not CORPUS.is_file(), reason=f"shared corpus not found at {CORPUS}")


@lru_cache(maxsize=1)
def encoder():  # -> DenseEncoder; imported lazily so collecting the unit tests stays fast
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retriever.encoders import DenseEncoder, resolve_dense_model

    return DenseEncoder(resolve_dense_model("all-minilm-l6-v2"))


@lru_cache(maxsize=1)
def corpus_lines(n: int = N_PASSAGES) -> tuple[str, ...]:
    """The first `n` lines of the shared corpus."""
    lines = []
    with CORPUS.open(encoding="utf-8") as handle:
        for line in handle:
            lines.append(line)
            if len(lines) == n:
                break
    return tuple(lines)


def write_corpus(path: Path, lines: tuple[str, ...] | list[str]) -> Path:
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="utf-8")
    return path


def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "retriever-embeddings.sqlite"


def build_test_index(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The test corpus indexed into a fresh folder `name` (embeddings come from the session's cache)."""
    from retriever.build import build_index

    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", corpus_lines())
    folder = tmp_path_factory.mktemp(name)
    build_index(corpus, folder, dense=encoder(), cache_path=cache_path(tmp_path_factory), progress=False)
    return folder

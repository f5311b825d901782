"""Shared pieces of the retriever tests: one loaded encoder per session and indexes of the test corpus
(`datakit.corpus_in_use`: the shared corpus's first passages, or generated ones where the kit is absent).

Test modules wrap these in their own fixtures; the embedding cache lives in the session's base temp folder, so
each passage is encoded once per session however many indexes the tests build.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest
from datakit import corpus_in_use


@lru_cache(maxsize=1)
def encoder():  # -> DenseEncoder; imported lazily so collecting the unit tests stays fast
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retriever.encoders import DenseEncoder, resolve_dense_model

    return DenseEncoder(resolve_dense_model("all-minilm-l6-v2"))


def write_corpus(path: Path, lines: tuple[str, ...] | list[str]) -> Path:
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="utf-8")
    return path


def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "retriever-embeddings.sqlite"


def build_test_index(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The test corpus indexed into a fresh folder `name` (embeddings come from the session's cache)."""
    from retriever.build import build_index

    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", corpus_in_use().lines)
    folder = tmp_path_factory.mktemp(name)
    build_index(corpus, folder, dense=encoder(), cache_path=cache_path(tmp_path_factory), progress=False)
    return folder

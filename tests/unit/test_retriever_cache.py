"""The embedding cache computes only what it has not seen, survives reopening, and keeps models apart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retriever.cache import EmbeddingCache


class FakeEncoder:
    def __init__(self, dim: int = 4) -> None:
        self.dim = dim
        self.seen: list[str] = []

    def __call__(self, inputs: Sequence[str]) -> np.ndarray:
        self.seen.extend(inputs)
        return np.array([[len(text) + i for i in range(self.dim)] for text in inputs], dtype=np.float32)


def test_only_missing_inputs_are_computed_and_rows_keep_their_order(tmp_path: Path) -> None:
    cache, encode = EmbeddingCache(tmp_path / "c.sqlite", "model-a", 4), FakeEncoder()
    first, computed = cache.get_or_compute(["a", "bb"], encode)
    assert computed == 2
    second, computed = cache.get_or_compute(["ccc", "a", "bb"], encode)
    assert computed == 1
    assert encode.seen == ["a", "bb", "ccc"]
    np.testing.assert_array_equal(second[1:], first)
    np.testing.assert_array_equal(second[0], [3, 4, 5, 6])


def test_entries_survive_reopening_and_models_do_not_share_them(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = EmbeddingCache(path, "model-a", 4)
    cache.get_or_compute([f"text {i}" for i in range(1000)], FakeEncoder())
    cache.close()
    reopened, encode = EmbeddingCache(path, "model-a", 4), FakeEncoder()
    _, computed = reopened.get_or_compute([f"text {i}" for i in range(1000)], encode)
    assert (computed, len(reopened)) == (0, 1000)
    _, computed = EmbeddingCache(path, "model-b", 4).get_or_compute(["text 1"], encode)
    assert computed == 1

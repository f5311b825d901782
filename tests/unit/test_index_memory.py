"""bench.index_memory's pure logic: the 21M projection, the recall figures, the exact top-k it checks against."""

from __future__ import annotations

import numpy as np
import pytest

from bench import index_memory
from bench.index_memory import LayoutResult, exact_topk, project, recommend, topk_overlap, unit_rows


def test_projection_is_fixed_cost_plus_slope_through_the_points() -> None:
    line = project([(30_000, 100e6 + 30_000 * 350), (300_000, 100e6 + 300_000 * 350)])
    assert line.fixed_bytes == pytest.approx(100e6)
    assert line.bytes_per_passage == pytest.approx(350)
    assert line.at(21_000_000) == pytest.approx(100e6 + 21e6 * 350)


def test_projection_fits_noisy_points_by_least_squares() -> None:
    points = [
        (30_000, 10e6 + 30_000 * 400 + 1e5),
        (300_000, 10e6 + 300_000 * 400 - 2e5),
        (3_000_000, 10e6 + 12e8 + 1e5),
    ]
    line = project(points)
    assert line.bytes_per_passage == pytest.approx(400, rel=1e-3)
    assert line.fixed_bytes == pytest.approx(10e6, rel=0.05)


def test_one_point_projects_through_the_origin_and_none_is_an_error() -> None:
    assert project([(1000, 500_000)]).at(2000) == pytest.approx(1_000_000)
    with pytest.raises(ValueError):
        project([])


def test_topk_overlap_is_the_share_of_the_exact_topk_found() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert topk_overlap([[3, 2, 1], [4, 5, 6]], exact, 3) == 1.0
    assert topk_overlap([[1, 9, 8], [7, 5, 4]], exact, 3) == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert topk_overlap([[1, 2, 3, 4], [4]], exact, 2) == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError):
        topk_overlap([[1]], exact, 1)


def test_exact_topk_reads_in_chunks_and_matches_a_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_memory, "CHUNK", 7)  # many chunks, the last one short
    rng = np.random.default_rng(0)
    centres = unit_rows(rng, np.eye(16, dtype=np.float32), 4)
    vectors, queries = unit_rows(rng, centres, 100), unit_rows(rng, centres, 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(exact_topk(queries, vectors, 10), expected)
    assert exact_topk(queries, vectors[:3], 10).shape == (5, 3)  # fewer rows than k: all of them


def test_unit_rows_are_unit_vectors_near_their_centres() -> None:
    rng = np.random.default_rng(1)
    centres = unit_rows(rng, np.eye(768, dtype=np.float32)[:8], 8)
    rows = unit_rows(rng, centres, 200)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    assert float(np.max(rows @ centres.T, axis=1).mean()) > 0.6


def _result(layout: str, gb: float, recall: float | None, exact: float | None = 0.5) -> LayoutResult:
    return LayoutResult(layout, {}, {}, 0.0, 0.0, gb, answer_recall3=recall, exact_answer_recall3=exact)


def test_recommend_takes_the_smallest_layout_within_a_point_of_exact() -> None:
    results = [_result("ram", 80.0, 0.50), _result("lean", 9.0, 0.495), _result("tiny", 4.0, 0.48)]
    assert recommend(results).layout == "lean"
    assert recommend([_result("a", 4.0, 0.3), _result("b", 5.0, 0.4)]).layout == "b"  # none within: best recall
    unmeasured = [_result("lean", 5.0, None, None), _result("b", 3.0, None, None)]
    assert recommend(unmeasured).layout == index_memory.RECOMMENDED == "lean"
    assert recommend(unmeasured[1:]).layout == "b"

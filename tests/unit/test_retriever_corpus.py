"""Corpus ingest: both formats, blank lines, resume offsets, and malformed rows named by line and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.corpus import CorpusError, Passage, fingerprint, parse_row, read_corpus


def _write(tmp_path: Path, rows: list[object | str]) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_search_r1_rows_split_the_quoted_title_from_the_text() -> None:
    passage = parse_row({"id": "7", "contents": '"Alan Turing"\nAlan Turing was a mathematician.'})
    assert passage == Passage("7", "Alan Turing", '"Alan Turing"\nAlan Turing was a mathematician.')
    assert passage.text == "Alan Turing was a mathematician."


def test_title_text_rows_become_search_r1_contents() -> None:
    passage = parse_row({"_id": 12, "title": "Ada Lovelace", "text": "She wrote the first program."})
    assert passage.id == "12"
    assert passage.contents == '"Ada Lovelace"\nShe wrote the first program.'
    assert (passage.title, passage.text) == ("Ada Lovelace", "She wrote the first program.")


def test_contents_without_a_title_line_keep_all_text() -> None:
    passage = parse_row({"id": "1", "contents": "no title here"})
    assert (passage.title, passage.text, passage.contents) == ("", "no title here", "no title here")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"contents": "x"}, "no 'id' (or '_id') field"),
        ({"id": True, "contents": "x"}, "'id' must be a string or an integer, got bool"),
        ({"id": " ", "contents": "x"}, "'id' is empty"),
        ({"id": "1", "contents": ""}, "'contents' must be a non-empty string"),
        ({"id": "1", "contents": 5}, "'contents' must be a non-empty string"),
        ({"id": "1", "title": "t", "text": None}, "'text' must be a non-empty string"),
        ({"id": "1", "title": 3, "text": "x"}, "'title' must be a string, got int"),
        ({"id": "1", "body": "x"}, "needs 'contents' (Search-R1 format) or 'text' (title/text format)"),
    ],
)
def test_malformed_rows_say_why(row: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_row(row)
    assert str(info.value) == reason


def test_stream_skips_blank_lines_and_counts_lines_and_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"id": "a", "contents": '"A"\none'}, "", {"id": "b", "title": "B", "text": "two"}])
    records = list(read_corpus(path))
    assert [(r.line, r.passage.id) for r in records] == [(1, "a"), (3, "b")]
    assert records[-1].offset == path.stat().st_size
    assert [r.passage.id for r in read_corpus(path, skip_lines=1)] == ["b"]


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"id": "x", "contents": ', "not valid JSON (Expecting value at column 25)"),
        ('{"id": "x"}', "needs 'contents' (Search-R1 format) or 'text' (title/text format)"),
    ],
)
def test_a_malformed_line_stops_the_stream_with_its_number(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = _write(tmp_path, [{"id": "a", "contents": '"A"\none'}, {"id": "b", "contents": '"B"\ntwo'}, bad_line])
    stream = read_corpus(path)
    assert [next(stream).passage.id, next(stream).passage.id] == ["a", "b"]
    with pytest.raises(CorpusError) as info:
        next(stream)
    assert (info.value.line, info.value.reason) == (3, reason)
    assert str(info.value) == f"{path}:3: {reason}"


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"id": "a", "contents": "\xff"}\n')
    with pytest.raises(CorpusError, match=r":1: not UTF-8"):
        list(read_corpus(path))


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"id": "a", "contents": "x"}])
    first = fingerprint(path)
    assert fingerprint(path) == first
    _write(tmp_path, [{"id": "a", "contents": "y"}])
    assert fingerprint(path) != first

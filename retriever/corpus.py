"""Corpus ingest: stream passages out of a JSONL file in the Search-R1 format or the title/text format.

Search-R1 rows are `{"id", "contents"}` where `contents` is `"Title"` on the first line and the text after it;
title/text rows are `{"id" or "_id", "title", "text"}` (DPR, BEIR). A malformed row stops the stream with its
line number and the reason, so a build never skips data silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple


class CorpusError(ValueError):
    """A corpus row that cannot be read; the message names the file, the line and the reason."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    title: str
    contents: str  # Search-R1's form: the quoted title, a newline, the text

    @property
    def text(self) -> str:
        return self.contents.split("\n", 1)[1] if "\n" in self.contents else self.contents


class CorpusRecord(NamedTuple):
    line: int  # 1-based line number in the file
    offset: int  # bytes of the file read so far (for progress)
    passage: Passage


def parse_row(row: Any) -> Passage:
    """One decoded JSON row to a Passage; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    raw_id = row.get("id", row.get("_id"))
    if raw_id is None:
        raise ValueError("no 'id' (or '_id') field")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise ValueError(f"'id' must be a string or an integer, got {type(raw_id).__name__}")
    passage_id = str(raw_id)
    if not passage_id.strip():
        raise ValueError("'id' is empty")
    if "contents" in row:
        contents = row["contents"]
        if not isinstance(contents, str) or not contents.strip():
            raise ValueError("'contents' must be a non-empty string")
        title = contents.split("\n", 1)[0].strip().strip('"') if "\n" in contents else ""
        return Passage(passage_id, title, contents)
    if "text" in row:
        text, title = row["text"], row.get("title", "")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("'text' must be a non-empty string")
        if not isinstance(title, str):
            raise ValueError(f"'title' must be a string, got {type(title).__name__}")
        return Passage(passage_id, title, f'"{title}"\n{text}')
    raise ValueError("needs 'contents' (Search-R1 format) or 'text' (title/text format)")


def read_corpus(path: str | Path, skip_lines: int = 0) -> Iterator[CorpusRecord]:
    """Stream the passages of a JSONL file, after the first `skip_lines` lines; blank lines are ignored."""
    path = Path(path)
    offset = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            offset += len(raw)
            if line_no <= skip_lines or not raw.strip():
                continue
            try:
                row = json.loads(raw.rstrip(b"\r\n"))
            except UnicodeDecodeError as exc:
                raise CorpusError(path, line_no, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise CorpusError(path, line_no, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            try:
                passage = parse_row(row)
            except ValueError as exc:
                raise CorpusError(path, line_no, str(exc)) from None
            yield CorpusRecord(line_no, offset, passage)


def fingerprint(path: str | Path) -> str:
    """Cheap identity of a corpus file (size and the hash of its first MiB), checked when a build resumes."""
    path = Path(path)
    with path.open("rb") as handle:
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()[:16]
    return f"{path.stat().st_size}:{head}"

"""On-disk embedding cache keyed by a hash of (model, exact input string), so rebuilds and resumes encode nothing
twice. SQLite keeps it a single crash-safe file that several builds may share."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

_SQLITE_MAX_PARAMS = 900


class EmbeddingCache:
    def __init__(self, path: str | Path, namespace: str, dim: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._salt = f"{namespace}|{dim}|".encode()
        self.dim = dim
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID"
        )
        self._db.commit()

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(self._salt + text.encode()).digest()[:16]

    def get_or_compute(
        self, inputs: Sequence[str], compute: Callable[[Sequence[str]], np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Vectors for `inputs` (rows in order) and how many had to be computed."""
        keys = [self._key(text) for text in inputs]
        found = self._lookup(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        out = np.empty((len(inputs), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            if key in found:
                out[i] = found[key]
        if missing:
            fresh = compute([inputs[i] for i in missing])
            out[missing] = fresh
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (key, vector) VALUES (?, ?)",
                [(keys[i], np.ascontiguousarray(out[i]).tobytes()) for i in missing],
            )
            self._db.commit()
        return out, len(missing)

    def _lookup(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), _SQLITE_MAX_PARAMS):
            chunk = keys[start : start + _SQLITE_MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk)
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.size == self.dim:
                    found[key] = vector
        return found

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        self._db.close()

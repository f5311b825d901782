"""What a build and an import share: where the index is, and the resumable batch loop that fills it.

Both read the corpus from the manifest's last checkpoint, hand each batch to their own `upsert` (a build encodes
the passages, an import reads their rows of precomputed vectors) and every `checkpoint_every` passages flush the
index and record the corpus line and row reached, so that running the same command again resumes there; at the
end both optimise the index and mark its manifest complete.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from retriever.corpus import CorpusError, CorpusRecord, read_corpus
from retriever.index import IndexBackend, open_index
from retriever.manifest import IndexManifest
from retriever.settings import RetrieverSettings


class BuildError(RuntimeError):
    """The build or import cannot go on as asked (e.g. an index of another model is in the way)."""


Upsert = Callable[[Sequence[CorpusRecord], int], None]  # a batch and the row (passage number) of its first passage


@dataclass(frozen=True)
class IndexTarget:
    """Where the index lives: the embedded engine's `folder`, or `collection` on the Qdrant server at `qdrant_url`
    (the folder then holds only the embedding cache)."""

    folder: Path
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    collection: str = "passages"

    @classmethod
    def of(cls, target: IndexTarget | str | Path) -> IndexTarget:
        return target if isinstance(target, IndexTarget) else cls(Path(target))

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, settings: RetrieverSettings) -> IndexTarget:
        """--index, --qdrant-url and --collection over the settings (SEARCHR1_INDEX_DIR, ...)."""
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return cls(
            Path(args.index or settings.index_dir),
            args.qdrant_url or settings.qdrant_url,
            api_key,
            args.collection or settings.collection,
        )

    def open(self) -> IndexBackend:
        return open_index(self.folder, self.qdrant_url, self.qdrant_api_key, self.collection)


@contextlib.contextmanager
def opened(target: IndexTarget, index: IndexBackend | None) -> Iterator[IndexBackend]:
    """The index to fill: `index` when the caller passes an open one (theirs to close), else `target`'s, opened
    here and closed at the end."""
    if index is not None:
        yield index
        return
    owned = target.open()
    try:
        yield owned
    finally:
        owned.close()


def previous_manifest(index: IndexBackend) -> IndexManifest | None:
    """The manifest of whatever the index holds (None when empty); BuildError when it is not ours or unreadable."""
    raw = index.read_manifest()
    if raw is None:
        if index.exists():
            raise BuildError(
                "the index holds data that searchr1 did not build; pass force=True (--force) to replace it"
            )
        return None
    try:
        return IndexManifest.model_validate(raw)
    except ValidationError:
        raise BuildError(
            "the index manifest is unreadable; pass force=True (--force) to rebuild from scratch"
        ) from None


def resume_or_create(index: IndexBackend, manifest: IndexManifest, *, force: bool, action: str) -> IndexManifest:
    """The manifest to go on with: the index's own when it holds a run of the same inputs (unfinished, or with
    state "complete"), else `manifest`, on a fresh index laid out for it (always so when `force`). BuildError when
    the index holds another build; its message offers `action` ("rebuild", "import") from scratch."""
    previous = None if force else previous_manifest(index)
    if previous is None:
        index.create(manifest.dense_dim, manifest.model_dump(mode="json"), manifest.options)
        return manifest
    mismatch = previous.mismatch(manifest)
    if mismatch:
        raise BuildError(f"{mismatch}; pass force=True (--force) to {action} from scratch")
    return previous


@dataclass
class CorpusLoader:
    """One run's loading: the index it fills, the manifest whose checkpoints it keeps, and its pace."""

    index: IndexBackend
    manifest: IndexManifest
    batch_size: int
    checkpoint_every: int

    def load(self, corpus: Path, upsert: Upsert, budget: int | None = None) -> int:
        """Upsert the corpus after the last checkpoint, at most `budget` passages; checkpoint every
        `checkpoint_every` passages, at the end, and on a bad line or Ctrl-C. Returns the passages upserted."""
        manifest = self.manifest
        line, row, since_checkpoint = manifest.committed_lines, manifest.committed_rows, 0
        first_row = row

        def commit() -> None:
            self.index.flush()
            manifest.committed_lines, manifest.committed_rows, manifest.passages = line, row, self.index.count()
            self.index.write_manifest(manifest.model_dump(mode="json"))

        def put(batch: Sequence[CorpusRecord]) -> None:
            nonlocal line, row, since_checkpoint
            upsert(batch, row)
            line, row, since_checkpoint = batch[-1].line, row + len(batch), since_checkpoint + len(batch)
            if since_checkpoint >= self.checkpoint_every:
                commit()
                since_checkpoint = 0

        batch: list[CorpusRecord] = []
        try:
            for record in read_corpus(corpus, skip_lines=manifest.committed_lines):
                if budget is not None and row - first_row + len(batch) >= budget:
                    break
                batch.append(record)
                if len(batch) == self.batch_size:
                    put(batch)
                    batch = []
            if batch:
                put(batch)
        except (CorpusError, KeyboardInterrupt):
            commit()
            raise
        commit()
        return row - first_row

    def complete(self) -> int:
        """Optimise the filled index and mark its manifest complete (call it once the last passage is durable);
        returns the points the index holds."""
        self.index.optimize()
        self.manifest.state = "complete"
        self.manifest.passages = self.index.count()
        self.index.write_manifest(self.manifest.model_dump(mode="json"))
        return self.manifest.passages

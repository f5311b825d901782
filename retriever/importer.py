"""Import precomputed vectors into the index without re-embedding (`python -m retriever.importer`).

    python -m retriever.importer --corpus wiki-18.jsonl --vectors e5_Flat.index --model intfloat/e5-base-v2 \\
        --index var/index --profile lean

Row i of the vectors belongs to the corpus's i-th passage (as in the reference's server), so the import first
checks that the counts match and stops, before writing anything, when they do not. Passages go in chunks with
their BM25 vectors (dense, BM25 and hybrid all work on the result); every `checkpoint_every` passages the index is
flushed and the manifest records the corpus line and vector row reached, so running the same command after an
interruption resumes there. Point ids derive from passage ids, so a chunk re-done after a crash is not duplicated.
The manifest is marked complete only when the index holds exactly one point per corpus passage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retriever.build import BuildError, add_options_arguments, options_from_arguments, previous_manifest
from retriever.corpus import CorpusError, CorpusRecord, read_corpus
from retriever.corpus import fingerprint as corpus_fingerprint
from retriever.encoders import Bm25Encoder, Bm25Params
from retriever.index import IndexBackend, open_index
from retriever.manifest import IndexManifest, VectorsOrigin
from retriever.options import IndexOptions, IndexOptionsError
from retriever.settings import RetrieverSettings
from retriever.vectors import VectorsError, VectorSource, fingerprint, open_vectors
from services.contracts import ContractError
from services.telemetry import configure_logging

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    passages: int  # points in the index at the end
    imported: int = 0  # passages upserted by this run
    resumed_from_row: int = 0
    already_complete: bool = False
    seconds: float = 0.0


def count_passages(corpus: Path) -> int:
    """Passages in a JSONL corpus: its non-blank lines (what read_corpus yields, without parsing them)."""
    with corpus.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def import_vectors(
    corpus: str | Path,
    vectors: str | Path | VectorSource,
    index_dir: str | Path,
    *,
    model: str,
    dim: int | None = None,
    options: IndexOptions | None = None,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    collection: str = "passages",
    bm25: Bm25Params | None = None,
    batch_size: int = 1024,
    checkpoint_every: int = 65_536,
    force: bool = False,
    progress: bool = True,
    index: IndexBackend | None = None,
) -> ImportReport:
    """Load `corpus` with the vectors at `vectors` (row i = passage i) into the index; resumable, see the module.

    `model` is the encoder that made the vectors (the server encodes queries with it); `dim` is needed only for a
    raw memmap. `index` lets a caller pass an open index (tests, a Qdrant server client).
    """
    started = time.perf_counter()
    corpus, index_dir = Path(corpus), Path(index_dir)
    if not corpus.is_file():
        raise BuildError(f"corpus file {corpus} does not exist")
    source = vectors if not isinstance(vectors, str | Path) else open_vectors(vectors, dim)
    passages = count_passages(corpus)
    if passages != source.count:
        raise BuildError(
            f"{source.path} holds {source.count} vectors but {corpus} has {passages} passages; row i of the vectors "
            "must be the corpus's i-th passage, so they must come from the same corpus file (nothing was imported)"
        )
    owned = index is None
    index = index or open_index(index_dir, qdrant_url, qdrant_api_key, collection)
    try:
        sparse = Bm25Encoder(bm25)
        manifest = IndexManifest(
            dense_model=model,
            dense_dim=source.dim,
            bm25=sparse.params,
            corpus=str(corpus),
            corpus_fingerprint=corpus_fingerprint(corpus),
            options=options or IndexOptions(),
            vectors=VectorsOrigin(
                kind=source.kind, path=str(source.path), fingerprint=fingerprint(source), count=source.count
            ),
        )
        previous = None if force else previous_manifest(index)
        if previous is not None:
            mismatch = previous.mismatch(manifest)
            if mismatch:
                raise BuildError(f"{mismatch}; pass force=True (--force) to import from scratch")
            if previous.state == "complete":
                log.info("index in %s is already complete (%d passages)", index_dir, previous.passages)
                return ImportReport(previous.passages, already_complete=True, seconds=time.perf_counter() - started)
            manifest = previous
            log.info(
                "resuming the import at vector row %d (corpus line %d)",
                manifest.committed_rows,
                manifest.committed_lines,
            )
        else:
            index.create(source.dim, manifest.model_dump(mode="json"), manifest.options)
        report = ImportReport(0, resumed_from_row=manifest.committed_rows)
        bar = tqdm(
            total=passages, initial=manifest.committed_rows, unit="passages", desc="importing", disable=not progress
        )
        try:
            _load(corpus, source, index, sparse, manifest, report, bar, batch_size, checkpoint_every)
        finally:
            bar.close()
        index.optimize()
        report.passages = index.count()
        if report.passages != passages:
            raise BuildError(
                f"the index holds {report.passages} points for {passages} corpus passages: passage ids repeat in "
                f"{corpus} (a repeated id overwrites the earlier passage); the index stays unfinished"
            )
        manifest.state = "complete"
        manifest.passages = report.passages
        index.write_manifest(manifest.model_dump(mode="json"))
    finally:
        if owned:
            index.close()
    report.seconds = time.perf_counter() - started
    return report


def _load(
    corpus: Path,
    source: VectorSource,
    index: IndexBackend,
    sparse: Bm25Encoder,
    manifest: IndexManifest,
    report: ImportReport,
    bar: tqdm,
    batch_size: int,
    checkpoint_every: int,
) -> None:
    """Upsert chunks; every `checkpoint_every` passages (and on a bad line or Ctrl-C) record durable progress."""
    done_line, row, since_checkpoint = manifest.committed_lines, manifest.committed_rows, 0

    def commit() -> None:
        index.flush()
        manifest.committed_lines, manifest.committed_rows, manifest.passages = done_line, row, index.count()
        index.write_manifest(manifest.model_dump(mode="json"))

    def upsert(batch: Sequence[CorpusRecord]) -> None:
        nonlocal done_line, row, since_checkpoint
        passages = [record.passage for record in batch]
        dense = source.read(row, row + len(batch))
        index.upsert(passages, dense, sparse.encode_passages([p.contents for p in passages]))
        done_line, row = batch[-1].line, row + len(batch)
        report.imported += len(batch)
        since_checkpoint += len(batch)
        bar.update(len(batch))
        if since_checkpoint >= checkpoint_every:
            commit()
            since_checkpoint = 0

    batch: list[CorpusRecord] = []
    try:
        for record in read_corpus(corpus, skip_lines=manifest.committed_lines):
            batch.append(record)
            if len(batch) == batch_size:
                upsert(batch)
                batch = []
        if batch:
            upsert(batch)
    except (CorpusError, KeyboardInterrupt):
        commit()
        raise
    commit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retriever.importer", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path, help="the corpus JSONL the vectors were made from")
    parser.add_argument(
        "--vectors", required=True, type=Path, help="faiss flat index (.index), .npy, or raw float32 .memmap"
    )
    parser.add_argument("--model", required=True, help="the encoder that made the vectors (e.g. intfloat/e5-base-v2)")
    parser.add_argument("--dim", type=int, help="vector dimension of a raw .memmap (e5-base-v2: 768)")
    parser.add_argument("--index", type=Path, help="index folder (default: SEARCHR1_INDEX_DIR)")
    parser.add_argument("--qdrant-url", help="import into a Qdrant server instead of the embedded engine")
    parser.add_argument("--collection", help="Qdrant collection (default: SEARCHR1_COLLECTION or passages)")
    parser.add_argument("--batch-size", type=int, default=1024, help="passages per upsert")
    parser.add_argument("--checkpoint-every", type=int, default=65_536, help="passages between durable checkpoints")
    parser.add_argument("--force", action="store_true", help="discard an existing index and start over")
    parser.add_argument("--no-progress", action="store_true")
    add_options_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = RetrieverSettings.load()
        options = options_from_arguments(args, settings)
    except (ContractError, IndexOptionsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    try:
        report = import_vectors(
            args.corpus,
            args.vectors,
            args.index or settings.index_dir,
            model=args.model,
            dim=args.dim,
            options=options,
            qdrant_url=args.qdrant_url or settings.qdrant_url,
            qdrant_api_key=api_key,
            collection=args.collection or settings.collection,
            batch_size=args.batch_size,
            checkpoint_every=args.checkpoint_every,
            force=args.force,
            progress=not args.no_progress,
        )
    except (BuildError, CorpusError, VectorsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    state = "already complete" if report.already_complete else f"imported in {report.seconds:.1f} s"
    print(f"index: {report.passages} passages, {state}; {report.imported} upserted, none re-embedded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

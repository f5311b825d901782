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

from retriever.build import add_common_arguments, run_command
from retriever.corpus import CorpusError, CorpusRecord
from retriever.corpus import fingerprint as corpus_fingerprint
from retriever.encoders import Bm25Encoder, Bm25Params
from retriever.index import IndexBackend
from retriever.loading import BuildError, CorpusLoader, IndexTarget, opened, resume_or_create
from retriever.manifest import IndexManifest, VectorsOrigin
from retriever.options import IndexOptions
from retriever.settings import RetrieverSettings
from retriever.vectors import VectorsError, VectorSource, fingerprint, open_vectors

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
    target: IndexTarget | str | Path,
    *,
    model: str,
    dim: int | None = None,
    options: IndexOptions | None = None,
    bm25: Bm25Params | None = None,
    batch_size: int = 1024,
    checkpoint_every: int = 65_536,
    force: bool = False,
    progress: bool = True,
    index: IndexBackend | None = None,
) -> ImportReport:
    """Load `corpus` with the vectors at `vectors` (row i = passage i) into `target` (an IndexTarget, or the folder
    of an embedded index); resumable, see the module.

    `model` is the encoder that made the vectors (the server encodes queries with it); `dim` is needed only for a
    raw memmap. `index` lets a caller pass an open index (tests, a Qdrant server client).
    """
    started = time.perf_counter()
    corpus, target = Path(corpus), IndexTarget.of(target)
    if not corpus.is_file():
        raise BuildError(f"corpus file {corpus} does not exist")
    source = vectors if not isinstance(vectors, str | Path) else open_vectors(vectors, dim)
    passages = count_passages(corpus)
    if passages != source.count:
        raise BuildError(
            f"{source.path} holds {source.count} vectors but {corpus} has {passages} passages; row i of the vectors "
            "must be the corpus's i-th passage, so they must come from the same corpus file (nothing was imported)"
        )
    with opened(target, index) as index:
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
        manifest = resume_or_create(index, manifest, force=force, action="import")
        if manifest.state == "complete":
            log.info("index in %s is already complete (%d passages)", target.folder, manifest.passages)
            return ImportReport(manifest.passages, already_complete=True, seconds=time.perf_counter() - started)
        if manifest.committed_rows:
            log.info(
                "resuming the import at vector row %d (corpus line %d)",
                manifest.committed_rows,
                manifest.committed_lines,
            )
        report = ImportReport(0, resumed_from_row=manifest.committed_rows)
        bar = tqdm(
            total=passages, initial=manifest.committed_rows, unit="passages", desc="importing", disable=not progress
        )

        def upsert(batch: Sequence[CorpusRecord], row: int) -> None:
            contents = [record.passage.contents for record in batch]
            dense = source.read(row, row + len(batch))
            index.upsert([record.passage for record in batch], dense, sparse.encode_passages(contents))
            report.imported += len(batch)
            bar.update(len(batch))

        loader = CorpusLoader(index, manifest, batch_size, checkpoint_every)
        try:
            loader.load(corpus, upsert)
        finally:
            bar.close()
        points = index.count()
        if points != passages:
            raise BuildError(
                f"the index holds {points} points for {passages} corpus passages: passage ids repeat in "
                f"{corpus} (a repeated id overwrites the earlier passage); the index stays unfinished"
            )
        report.passages = loader.complete()
    report.seconds = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retriever.importer", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path, help="the corpus JSONL the vectors were made from")
    parser.add_argument(
        "--vectors", required=True, type=Path, help="faiss flat index (.index), .npy, or raw float32 .memmap"
    )
    parser.add_argument("--model", required=True, help="the encoder that made the vectors (e.g. intfloat/e5-base-v2)")
    parser.add_argument("--dim", type=int, help="vector dimension of a raw .memmap (e5-base-v2: 768)")
    parser.add_argument("--batch-size", type=int, default=1024, help="passages per upsert")
    parser.add_argument("--checkpoint-every", type=int, default=65_536, help="passages between durable checkpoints")
    add_common_arguments(parser, "import")
    args = parser.parse_args(argv)

    def run(settings: RetrieverSettings, options: IndexOptions) -> str:
        report = import_vectors(
            args.corpus,
            args.vectors,
            IndexTarget.from_arguments(args, settings),
            model=args.model,
            dim=args.dim,
            options=options,
            batch_size=args.batch_size,
            checkpoint_every=args.checkpoint_every,
            force=args.force,
            progress=not args.no_progress,
        )
        state = "already complete" if report.already_complete else f"imported in {report.seconds:.1f} s"
        return f"index: {report.passages} passages, {state}; {report.imported} upserted, none re-embedded"

    return run_command(args, run, (BuildError, CorpusError, VectorsError))


if __name__ == "__main__":
    sys.exit(main())

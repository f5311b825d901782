"""Index builder: stream a corpus into the index, resumably (`python -m retriever.build --corpus F --index D`).

Point ids derive from passage ids and embeddings come from the on-disk cache, so running a build again after
any interruption re-does at most one checkpoint's worth of upserts and encodes nothing twice. The manifest is
marked complete only after the last passage is durable.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from retriever.cache import EmbeddingCache
from retriever.corpus import CorpusError, CorpusRecord, fingerprint, read_corpus
from retriever.encoders import DEFAULT_DENSE_MODEL, Bm25Encoder, Bm25Params, DenseEncoder, resolve_dense_model
from retriever.index import IndexBackend, open_index
from retriever.manifest import IndexManifest
from retriever.options import PROFILES, IndexOptions, IndexOptionsError, parse_overrides, resolve_options
from retriever.settings import RetrieverSettings
from services.contracts import ContractError
from services.telemetry import configure_logging

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The build cannot go on as asked (e.g. an index of another model is in the way)."""


@dataclass
class BuildReport:
    passages: int  # points in the index at the end
    indexed: int = 0  # passages upserted by this run
    encoded: int = 0  # embeddings computed by this run (the rest came from the cache)
    resumed_from_line: int = 0
    already_complete: bool = False
    seconds: float = 0.0


def build_index(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    model: str = DEFAULT_DENSE_MODEL,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    collection: str = "passages",
    bm25: Bm25Params | None = None,
    batch_size: int = 256,
    checkpoint_every: int = 4096,
    cache_path: str | Path | None = None,
    force: bool = False,
    limit: int | None = None,
    progress: bool = True,
    index: IndexBackend | None = None,
    dense: DenseEncoder | None = None,
    options: IndexOptions | None = None,
) -> BuildReport:
    """Index `corpus` into the embedded index in `index_dir` (or the collection at `qdrant_url`).

    Resumes an unfinished build of the same corpus and model; `force` starts over. The embedding cache defaults
    to `index_dir/embeddings.sqlite`. `index` and `dense` let a caller reuse an open index or a loaded model.
    `options` (default: the `ram` profile) lays the index out; they are recorded in its manifest.
    """
    started = time.perf_counter()
    corpus, index_dir = Path(corpus), Path(index_dir)
    if not corpus.is_file():
        raise BuildError(f"corpus file {corpus} does not exist")
    owned = index is None
    index = index or open_index(index_dir, qdrant_url, qdrant_api_key, collection)
    try:
        dense = dense or DenseEncoder(resolve_dense_model(model))
        sparse = Bm25Encoder(bm25)
        manifest = IndexManifest(
            dense_model=dense.spec.name,
            dense_dim=dense.dim,
            bm25=sparse.params,
            corpus=str(corpus),
            corpus_fingerprint=fingerprint(corpus),
            limit=limit,
            options=options or IndexOptions(),
        )
        previous = None if force else previous_manifest(index)
        if previous is not None:
            mismatch = previous.mismatch(manifest)
            if mismatch:
                raise BuildError(f"{mismatch}; pass force=True (--force) to rebuild from scratch")
            if previous.state == "complete":
                log.info("index in %s is already complete (%d passages)", index_dir, previous.passages)
                return BuildReport(previous.passages, already_complete=True, seconds=time.perf_counter() - started)
            manifest = previous
            log.info("resuming the build after corpus line %d", manifest.committed_lines)
        else:
            index.create(dense.dim, manifest.model_dump(mode="json"), manifest.options)
        report = BuildReport(0, resumed_from_line=manifest.committed_lines)
        cache = EmbeddingCache(cache_path or index_dir / "embeddings.sqlite", dense.spec.name, dense.dim)
        bar = tqdm(total=corpus.stat().st_size, unit="B", unit_scale=True, desc="indexing", disable=not progress)
        try:
            _load(corpus, index, dense, sparse, cache, manifest, report, bar, batch_size, checkpoint_every, limit)
        finally:
            bar.close()
            cache.close()
        index.optimize()
        manifest.state = "complete"
        manifest.passages = report.passages = index.count()
        index.write_manifest(manifest.model_dump(mode="json"))
    finally:
        if owned:
            index.close()
    report.seconds = time.perf_counter() - started
    return report


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


def _load(
    corpus: Path,
    index: IndexBackend,
    dense: DenseEncoder,
    sparse: Bm25Encoder,
    cache: EmbeddingCache,
    manifest: IndexManifest,
    report: BuildReport,
    bar: tqdm,
    batch_size: int,
    checkpoint_every: int,
    limit: int | None,
) -> None:
    """Upsert batches; every `checkpoint_every` passages (and on a bad line or Ctrl-C) record durable progress."""
    done_line, since_checkpoint = manifest.committed_lines, 0
    budget = None if limit is None else limit - manifest.passages

    def commit() -> None:
        index.flush()
        manifest.committed_lines, manifest.passages = done_line, index.count()
        index.write_manifest(manifest.model_dump(mode="json"))

    def upsert(batch: Sequence[CorpusRecord]) -> None:
        nonlocal done_line, since_checkpoint
        passages = [record.passage for record in batch]
        vectors, computed = cache.get_or_compute(
            dense.passage_inputs([p.contents for p in passages]), dense.encode_passage_inputs
        )
        index.upsert(passages, vectors, sparse.encode_passages([p.contents for p in passages]))
        report.indexed += len(batch)
        report.encoded += computed
        done_line, since_checkpoint = batch[-1].line, since_checkpoint + len(batch)
        bar.update(batch[-1].offset - bar.n)
        if since_checkpoint >= checkpoint_every:
            commit()
            since_checkpoint = 0

    batch: list[CorpusRecord] = []
    try:
        for record in read_corpus(corpus, skip_lines=manifest.committed_lines):
            if budget is not None and report.indexed + len(batch) >= budget:
                break
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


def add_options_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help=f"index layout: {', '.join(PROFILES)} (default: SEARCHR1_INDEX_PROFILE)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="override one field of the profile"
    )


def options_from_arguments(args: argparse.Namespace, settings: RetrieverSettings) -> IndexOptions:
    """--profile and --option over the settings' profile and overrides."""
    if args.profile is None and not args.option:
        return settings.build_options()
    overrides = {**settings.index_options, **parse_overrides(args.option)}
    return resolve_options(args.profile or settings.index_profile, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retriever.build", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path, help="JSONL: Search-R1 (id, contents) or id/title/text")
    parser.add_argument("--index", type=Path, help="index folder (default: SEARCHR1_INDEX_DIR)")
    parser.add_argument("--model", default=DEFAULT_DENSE_MODEL, help=f"dense model (default {DEFAULT_DENSE_MODEL})")
    parser.add_argument("--qdrant-url", help="build into a Qdrant server instead of the embedded engine")
    parser.add_argument("--collection", help="Qdrant collection (default: SEARCHR1_COLLECTION or passages)")
    parser.add_argument("--cache", type=Path, help="embedding cache file (default: INDEX/embeddings.sqlite)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="index only the first N passages")
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
        report = build_index(
            args.corpus,
            args.index or settings.index_dir,
            model=args.model,
            qdrant_url=args.qdrant_url or settings.qdrant_url,
            qdrant_api_key=api_key,
            collection=args.collection or settings.collection,
            batch_size=args.batch_size,
            cache_path=args.cache,
            force=args.force,
            limit=args.limit,
            progress=not args.no_progress,
            options=options,
        )
    except (BuildError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    state = "already complete" if report.already_complete else f"built in {report.seconds:.1f} s"
    print(
        f"index: {report.passages} passages, {state}; {report.indexed} upserted, {report.encoded} embeddings computed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

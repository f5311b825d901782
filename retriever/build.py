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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retriever.cache import EmbeddingCache
from retriever.corpus import CorpusError, CorpusRecord, fingerprint
from retriever.encoders import DEFAULT_DENSE_MODEL, Bm25Encoder, Bm25Params, DenseEncoder, resolve_dense_model
from retriever.index import IndexBackend
from retriever.loading import BuildError, CorpusLoader, IndexTarget, opened, resume_or_create
from retriever.manifest import IndexManifest
from retriever.options import PROFILES, IndexOptions, IndexOptionsError, parse_overrides, resolve_options
from retriever.settings import RetrieverSettings
from services.contracts import ContractError
from services.telemetry import configure_logging

log = logging.getLogger(__name__)


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
    target: IndexTarget | str | Path,
    *,
    model: str = DEFAULT_DENSE_MODEL,
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
    """Index `corpus` into `target` (an IndexTarget, or the folder of an embedded index).

    Resumes an unfinished build of the same corpus and model; `force` starts over. The embedding cache defaults
    to `embeddings.sqlite` in the target's folder. `index` and `dense` let a caller reuse an open index or a
    loaded model. `options` (default: the `ram` profile) lays the index out; they are recorded in its manifest.
    """
    started = time.perf_counter()
    corpus, target = Path(corpus), IndexTarget.of(target)
    if not corpus.is_file():
        raise BuildError(f"corpus file {corpus} does not exist")
    with opened(target, index) as index:
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
        manifest = resume_or_create(index, manifest, force=force, action="rebuild")
        if manifest.state == "complete":
            log.info("index in %s is already complete (%d passages)", target.folder, manifest.passages)
            return BuildReport(manifest.passages, already_complete=True, seconds=time.perf_counter() - started)
        if manifest.committed_lines:
            log.info("resuming the build after corpus line %d", manifest.committed_lines)
        report = BuildReport(0, resumed_from_line=manifest.committed_lines)
        cache = EmbeddingCache(cache_path or target.folder / "embeddings.sqlite", dense.spec.name, dense.dim)
        bar = tqdm(total=corpus.stat().st_size, unit="B", unit_scale=True, desc="indexing", disable=not progress)

        def upsert(batch: Sequence[CorpusRecord], _row: int) -> None:
            contents = [record.passage.contents for record in batch]
            vectors, computed = cache.get_or_compute(dense.passage_inputs(contents), dense.encode_passage_inputs)
            index.upsert([record.passage for record in batch], vectors, sparse.encode_passages(contents))
            report.indexed += len(batch)
            report.encoded += computed
            bar.update(batch[-1].offset - bar.n)

        budget = None if limit is None else limit - manifest.passages
        loader = CorpusLoader(index, manifest, batch_size, checkpoint_every)
        try:
            loader.load(corpus, upsert, budget)
        finally:
            bar.close()
            cache.close()
        report.passages = loader.complete()
    report.seconds = time.perf_counter() - started
    return report


def add_common_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The build's and the import's shared options: where the index is, --force, --no-progress and its layout."""
    parser.add_argument("--index", type=Path, help="index folder (default: SEARCHR1_INDEX_DIR)")
    parser.add_argument("--qdrant-url", help=f"{verb} into a Qdrant server instead of the embedded engine")
    parser.add_argument("--collection", help="Qdrant collection (default: SEARCHR1_COLLECTION or passages)")
    parser.add_argument("--force", action="store_true", help="discard an existing index and start over")
    parser.add_argument("--no-progress", action="store_true")
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


def run_command(
    args: argparse.Namespace,
    run: Callable[[RetrieverSettings, IndexOptions], str],
    errors: tuple[type[Exception], ...],
) -> int:
    """The frame of the build and import commands: the settings and index options, logging, then `run`, whose
    summary line is printed. Bad settings or an error of `errors` exit with status 2, Ctrl-C with 130."""
    try:
        settings = RetrieverSettings.load()
        options = options_from_arguments(args, settings)
    except (ContractError, IndexOptionsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        print(run(settings, options))
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retriever.build", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path, help="JSONL: Search-R1 (id, contents) or id/title/text")
    parser.add_argument("--model", default=DEFAULT_DENSE_MODEL, help=f"dense model (default {DEFAULT_DENSE_MODEL})")
    parser.add_argument("--cache", type=Path, help="embedding cache file (default: INDEX/embeddings.sqlite)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="index only the first N passages")
    add_common_arguments(parser, "build")
    args = parser.parse_args(argv)

    def run(settings: RetrieverSettings, options: IndexOptions) -> str:
        report = build_index(
            args.corpus,
            IndexTarget.from_arguments(args, settings),
            model=args.model,
            batch_size=args.batch_size,
            cache_path=args.cache,
            force=args.force,
            limit=args.limit,
            progress=not args.no_progress,
            options=options,
        )
        state = "already complete" if report.already_complete else f"built in {report.seconds:.1f} s"
        computed = f"{report.indexed} upserted, {report.encoded} embeddings computed"
        return f"index: {report.passages} passages, {state}; {computed}"

    return run_command(args, run, (BuildError, CorpusError))


if __name__ == "__main__":
    sys.exit(main())

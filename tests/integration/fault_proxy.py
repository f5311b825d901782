"""A loopback TCP proxy whose link faults can be switched while it runs: latency and dropped requests.

`FaultProxy(target_port).start()` listens on a free 127.0.0.1 port and passes bytes both ways to the target.
`faults(latency_s=..., drop=...)` then holds back every chunk a client sends for `latency_s`, and resets the
connection (both ends, the request never passed on) for the share `drop` of requests, spread evenly: of the first
n requests, round(n x drop) are dropped (0.5: every second one), so a test knows a drop happens and that a client
retrying once gets through. A request is what a client sends after the link's last reply (HTTP/1.1 request and
response take turns). `faults()` clears them. It runs its own event loop in a thread, so a test or a soak can
change the faults between calls. Counts: connections accepted, chunks delayed, requests dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

CHUNK = 65536


@dataclass
class LinkCounts:
    connections: int = 0
    delayed: int = 0
    dropped: int = 0


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.counts = LinkCounts()
        self.latency_s = 0.0
        self.drop = 0.0
        self._debt = 0.0  # requests owed a drop (error diffusion of `drop`)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def faults(self, latency_s: float = 0.0, drop: float = 0.0) -> None:
        if latency_s < 0 or not 0 <= drop <= 1:
            raise ValueError(f"latency_s must be >= 0 and drop in [0, 1], got {latency_s}, {drop}")
        self.latency_s, self.drop, self._debt = latency_s, drop, 0.0

    def _drops_request(self) -> bool:
        self._debt += self.drop
        if self._debt >= 0.5:
            self._debt -= 1.0
            return True
        return False

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        links = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in links:
            task.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        try:
            server_reader, server_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), timeout=10
            )
        except (OSError, TimeoutError):
            client_writer.transport.abort()
            return
        link = _Link(client_writer, server_writer)
        upstream = asyncio.create_task(self._upstream(client_reader, link))
        downstream = asyncio.create_task(self._downstream(server_reader, link))
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        link.reset()

    async def _upstream(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(CHUNK):
                if self.latency_s > 0:
                    self.counts.delayed += 1
                    await asyncio.sleep(self.latency_s)
                if not link.in_request:
                    link.in_request = True
                    if self._drops_request():
                        self.counts.dropped += 1
                        return  # the caller resets both ends, as a dropped link looks to them
                link.server.write(chunk)
                await link.server.drain()

    async def _downstream(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(CHUNK):
                link.in_request = False  # the reply has begun: what the client sends next is a new request
                link.client.write(chunk)
                await link.client.drain()


@dataclass
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    in_request: bool = False

    def reset(self) -> None:
        for writer in (self.client, self.server):
            writer.transport.abort()

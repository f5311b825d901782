"""The one generation interface of the rollout tier, and the weight-reload protocol every engine shares.

`Engine.generate(prompt_ids, sampling, stop, max_tokens)` is token-in/token-out: it returns the exact sampled ids,
one behaviour logprob per id, why generation ended, and the policy version that sampled every one of them.

`Engine.load_weights(version, uri)` swaps the policy without ever letting one generation mix two versions:
1. new generations are held at the door (they wait, they are not refused);
2. in-flight generations run to completion on the old weights (each reports the old version), or, past
   `drain_timeout_s`, are aborted and transparently re-run on the new weights (reporting the new version);
3. the weights are loaded, the version number moves, and the door opens again.
So a caller never sees a half-served generation, and every token is attributed to the version that sampled it.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from services.contracts import weights_folder

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
LogprobsMode = Literal["raw", "processed"]


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick tokens. temperature 0 is greedy; `seed` makes one generation reproducible."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 10.0:
            raise ValueError(f"temperature must lie in [0, 10], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class GenerationResult:
    """One finished generation. `finish_reason` is "stop" (a stop string or end-of-sequence token; the stop
    string is part of `token_ids`) or "length" (`max_tokens` reached). `stop_reason` names the stop string
    matched, or the end-of-sequence token id. `version` is the policy version that sampled every token."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    version: int
    stop_reason: str | int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} token ids but {len(self.logprobs)} logprobs")


class Generator(Protocol):
    """What the agent loop needs from an engine (an `Engine`, a Ray Serve handle wrapper, a test double)."""

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingOptions,
        stop: Sequence[str],
        max_tokens: int,
    ) -> GenerationResult: ...


class GenerationAborted(Exception):
    """Raised by an engine's `_generate` when a reload aborted the request; `Engine.generate` re-runs it."""


def weights_path(uri: str) -> Path:
    """The local folder of a safetensors checkpoint named by a path or a `file://` URI."""
    path = weights_folder(uri)
    if not path.is_dir():
        raise FileNotFoundError(f"weights uri {uri!r}: {path} is not a folder")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"weights uri {uri!r}: no *.safetensors file in {path}")
    return path


class Engine(ABC):
    """Base of every engine: argument checks, version accounting and pause/drain/load/resume.

    Subclasses implement `_generate` (one request, no version bookkeeping), `_load` (read a safetensors folder
    into the live model), and optionally `_abort_inflight` (make running `_generate` calls raise
    `GenerationAborted` promptly) and `close`.

    The state here is plain counters plus asyncio events created on first use, so an engine lives on one event
    loop at a time (the loop that serves it).
    """

    def __init__(self, *, version: int = 0, max_model_len: int | None = None, drain_timeout_s: float = 60.0):
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        self._version = version
        self.max_model_len = max_model_len
        self.drain_timeout_s = drain_timeout_s
        self._inflight = 0
        self._paused = False
        self._state_changed: asyncio.Condition | None = None
        self._reload_lock: asyncio.Lock | None = None
        self.reloads = 0
        self.aborted_and_rerun = 0

    @property
    def version(self) -> int:
        """The policy version new generations will be sampled with."""
        return self._version

    @property
    def inflight(self) -> int:
        """Generations being served now (not counting those held at the door by a reload)."""
        return self._inflight

    @property
    def paused(self) -> bool:
        """True while a weight reload holds new generations back."""
        return self._paused

    def _cond(self) -> asyncio.Condition:
        if self._state_changed is None:
            self._state_changed = asyncio.Condition()
        return self._state_changed

    def _check_request(self, prompt_ids: Sequence[int], max_tokens: int) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids must hold at least one token")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if self.max_model_len is not None and len(prompt_ids) + max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens + max_tokens {max_tokens} exceeds the engine's "
                f"max_model_len {self.max_model_len}; cap the context (EpisodeConfig.max_context_tokens)"
            )

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingOptions,
        stop: Sequence[str] = (),
        max_tokens: int = 16,
    ) -> GenerationResult:
        """Generate up to `max_tokens` tokens after `prompt_ids`, stopping after the first stop string
        (kept in the output). Waits while a weight reload is under way."""
        self._check_request(prompt_ids, max_tokens)
        prompt = [int(t) for t in prompt_ids]
        cond = self._cond()
        while True:
            async with cond:
                await cond.wait_for(lambda: not self._paused)
                self._inflight += 1
                version = self._version
            try:
                result = await self._generate(prompt, sampling, tuple(stop), max_tokens)
            except GenerationAborted:
                self.aborted_and_rerun += 1
                continue  # the reload that aborted it holds the door; the retry is served by the new version
            finally:
                async with cond:
                    self._inflight -= 1
                    cond.notify_all()
            result.version = version
            return result

    async def load_weights(self, version: int, uri: str, force: bool = False) -> bool:
        """Load the safetensors folder at `uri` as policy `version`. Returns False (and changes nothing) when
        `version` is not newer than the current one, so replaying a weights announcement is harmless; `force`
        loads anyway (switching to another line of versions, e.g. back to a base model as version 0)."""
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        path = weights_path(uri)
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            if version <= self._version and not force:
                log.info("weights v%d ignored: engine already at v%d", version, self._version)
                return False
            cond = self._cond()
            async with cond:
                self._paused = True
            try:
                async with cond:
                    try:
                        await asyncio.wait_for(cond.wait_for(lambda: self._inflight == 0), self.drain_timeout_s)
                    except TimeoutError:
                        log.warning("drain of %d requests timed out; aborting them to re-run", self._inflight)
                if self._inflight:
                    await self._abort_inflight()
                    async with cond:
                        await cond.wait_for(lambda: self._inflight == 0)
                await self._load(path)
                self._version = version
                self.reloads += 1
            finally:
                async with cond:
                    self._paused = False
                    cond.notify_all()
            return True

    @abstractmethod
    async def _generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, stop: tuple[str, ...], max_tokens: int
    ) -> GenerationResult:
        """One request on the current weights; `version` in the result is filled in by `generate`."""

    @abstractmethod
    async def _load(self, path: Path) -> None:
        """Read the safetensors checkpoint in `path` into the live model (no request is in flight)."""

    async def _abort_inflight(self) -> None:
        """Make running `_generate` calls raise GenerationAborted soon. The default waits for them instead."""
        return None

    async def close(self) -> None:
        """Release the engine's resources."""
        return None

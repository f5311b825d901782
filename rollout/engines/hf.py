"""HFEngine: the simple fallback engine on transformers (no vLLM needed).

One request at a time (a lock), each decoded token by token with the KV cache in a worker thread so the event
loop stays free. Greedy (temperature 0) or sampling with temperature and top-p; stop strings are matched on the
decoded generated text (special tokens included) and the token that completes one is kept, as vLLM does;
end-of-sequence tokens stop too and are kept. Logprobs are of the sampled token under the raw model
distribution (`logprobs_mode="raw"`, vLLM's default) or under the temperature/top-p distribution actually
sampled from (`"processed"`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollout.engines.base import Engine, GenerationAborted, GenerationResult, LogprobsMode, SamplingOptions
from rollout.engines.metrics import record_requests


class HFEngine(Engine):
    def __init__(
        self,
        model: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_model_len: int | None = None,
        logprobs_mode: LogprobsMode = "raw",
        version: int = 0,
        drain_timeout_s: float = 60.0,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from services.models import resolve_model

        path = resolve_model(model)
        self.torch = torch
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        limit = max_model_len or getattr(self.model.config, "max_position_embeddings", None)
        super().__init__(version=version, max_model_len=limit, drain_timeout_s=drain_timeout_s)
        self.model_path = path
        self.logprobs_mode = logprobs_mode
        self.eos_token_ids = self._eos_ids()
        self._lock: asyncio.Lock | None = None
        self._waiting = 0
        self._running = 0
        self._abort = threading.Event()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            if eos is None:
                continue
            ids.update(eos if isinstance(eos, list | tuple) else [eos])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return {int(i) for i in ids}

    async def _generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, stop: tuple[str, ...], max_tokens: int
    ) -> GenerationResult:
        if self._lock is None:
            self._lock = asyncio.Lock()
        entered = False
        self._waiting += 1
        self._report_queue()
        try:
            async with self._lock:
                entered, self._waiting, self._running = True, self._waiting - 1, 1
                self._report_queue()
                try:
                    if self._abort.is_set():
                        raise GenerationAborted()
                    return await asyncio.to_thread(self._generate_sync, prompt_ids, sampling, stop, max_tokens)
                finally:
                    self._running = 0
                    self._report_queue()
        finally:
            if not entered:  # cancelled while waiting for its turn
                self._waiting -= 1
                self._report_queue()

    def _report_queue(self) -> None:
        """One request runs at a time; the rest wait for the lock (there is no paged KV cache to report)."""
        record_requests(self._running, self._waiting)

    def _generate_sync(
        self, prompt_ids: list[int], sampling: SamplingOptions, stop: Sequence[str], max_tokens: int
    ) -> GenerationResult:
        torch = self.torch
        started = time.perf_counter()
        generator = None
        if sampling.seed is not None and not sampling.greedy:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        window = max((len(s) for s in stop), default=0) + 8  # tokens of text to scan for a stop string
        tokens: list[int] = []
        logprobs: list[float] = []
        finish, stop_reason = "length", None
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
            for step in range(max_tokens):
                if self._abort.is_set():
                    raise GenerationAborted()
                logits = out.logits[0, -1].float()
                token, logprob = self._pick(logits, sampling, generator)
                tokens.append(token)
                logprobs.append(logprob)
                if token in self.eos_token_ids:
                    finish, stop_reason = "stop", token
                    break
                if stop:
                    tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=False)
                    matched = next((s for s in stop if s in tail), None)
                    if matched is not None:
                        finish, stop_reason = "stop", matched
                        break
                if step + 1 < max_tokens:
                    out = self.model(
                        input_ids=torch.tensor([[token]], device=self.device),
                        past_key_values=out.past_key_values,
                        use_cache=True,
                    )
        return GenerationResult(
            token_ids=tokens,
            logprobs=logprobs,
            finish_reason=finish,  # type: ignore[arg-type]
            version=self.version,
            stop_reason=stop_reason,
            timings={"generate_s": time.perf_counter() - started},
        )

    def _pick(self, logits: Any, sampling: SamplingOptions, generator: Any) -> tuple[int, float]:
        torch = self.torch
        raw = torch.log_softmax(logits, dim=-1)
        if sampling.greedy:
            token = int(torch.argmax(logits))
            return token, float(raw[token])
        scaled = torch.log_softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            probs = scaled.exp()
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop_sorted = cumulative - sorted_probs >= sampling.top_p  # keep the smallest prefix reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
            scaled = torch.log_softmax(scaled.masked_fill(drop, float("-inf")), dim=-1)
        token = int(torch.multinomial(scaled.exp(), 1, generator=generator))
        chosen = scaled if self.logprobs_mode == "processed" else raw
        return token, float(chosen[token])

    async def _abort_inflight(self) -> None:
        self._abort.set()  # cleared by `_load`, which runs once every aborted request has left

    async def _load(self, path: Path) -> None:
        try:
            await asyncio.to_thread(self._load_sync, path)
        finally:
            self._abort.clear()

    def _load_sync(self, path: Path) -> None:
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for file in sorted(path.glob("*.safetensors")):
            state.update(load_file(str(file), device=str(self.device)))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if tied:
            self.model.tie_weights()
        self.model.eval()

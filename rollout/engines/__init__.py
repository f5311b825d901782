"""Generation engines behind one interface (`rollout.engines.base.Engine`).

`HFEngine` (transformers) and `VLLMEngine` (vLLM) import their heavy dependencies lazily: import them from
`rollout.engines.hf` / `rollout.engines.vllm`, or build one by name with `make_engine`.
"""

from __future__ import annotations

from typing import Any, Literal

from rollout.engines.base import (
    Engine,
    GenerationAborted,
    GenerationResult,
    Generator,
    SamplingOptions,
)

__all__ = ["Engine", "GenerationAborted", "GenerationResult", "Generator", "SamplingOptions", "make_engine"]


async def make_engine(kind: Literal["vllm", "hf"], model: str, **kwargs: Any) -> Engine:
    """Build an engine by kind; vLLM start-up runs off the event loop."""
    if kind == "vllm":
        from rollout.engines.vllm import VLLMEngine

        return await VLLMEngine.create(model, **kwargs)
    if kind == "hf":
        import asyncio

        from rollout.engines.hf import HFEngine

        return await asyncio.to_thread(HFEngine, model, **kwargs)
    raise ValueError(f"engine kind must be 'vllm' or 'hf', got {kind!r}")

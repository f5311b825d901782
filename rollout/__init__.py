"""Rollout tier: the multi-turn search agent loop, generation engines (vLLM, transformers) and the model registry."""

"""Generation engines behind one interface (`rollout.engines.base.Engine`).

`HFEngine` (transformers) and `VLLMEngine` (vLLM) import their heavy dependencies lazily: import them from
`rollout.engines.hf` / `rollout.engines.vllm`; `rollout.worker.build_engine` builds the one a replica's settings name.
"""

"""The `searchr1` command and the one-machine platform: the composition root, the only package that imports tiers.

`services/` (the kernel) and the tiers (`retriever`, `rollout`, `reward`, `trainer`) never import this package; the
import contracts in pyproject.toml (`lint-imports`, run by `make lint`) enforce it.
"""

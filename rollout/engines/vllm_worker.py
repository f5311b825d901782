"""A vLLM worker extension (`worker_extension_cls`): the policy's weight reload, run in every worker.

vLLM's in-place reload (`Worker.reload_weights`, layer by layer) breaks tied parameters. A model whose LM head is
its input embedding (SmolLM2; `tie_word_embeddings`) has no `lm_head.weight` in its checkpoint: the embedding
gets the new weights and the head keeps the old ones, so after every update the engine samples from new
embeddings with the base model's head (measured: its logprobs match that mixture exactly, not the new policy).
On CPU the head also computes with a copy of its weight packed at load time (`cpu_linear`), which a layer
that loaded nothing never repacks. `reload_policy` reloads, then copies each tied group's loaded tensor into the
others and has their layers process their weights again, as after a load.

It also silences the two warnings every such reload logs ("<layer>: Failed to load weights", layerwise.py),
exactly for the layers where nothing is missing: `RotaryEmbedding`, whose only tensor is its cos/sin cache, a
buffer computed from the config and in no checkpoint (vLLM puts the existing one back), and the layers of tied
copies, refilled here. The same warning for any other layer still shows.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
NOTHING_MISSING = "RotaryEmbedding"


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor, each group in registration order: the first (the input
    embedding before the LM head) is the one a checkpoint holds."""
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


class _ExpectedReloadWarnings(logging.Filter):
    def __init__(self, layers: set[str]) -> None:
        super().__init__()
        self.layers = layers

    def filter(self, record: logging.LogRecord) -> bool:
        expected = record.msg == "%s: Failed to load weights" and bool(record.args) and record.args[0] in self.layers
        return not expected


class PolicyReload:
    """Mixed into vLLM's worker class: `self` is the worker (`model_runner`, `reload_weights`)."""

    _tied: list[list[str]] | None = None

    def reload_policy(self, weights_path: str) -> None:
        worker: Any = self
        model = worker.model_runner.get_model()
        if self._tied is None:  # the first reload: the tie is still there to be seen
            self._tied = tied_groups(model)
            copies = {type(model.get_submodule(name.rpartition(".")[0])).__name__
                      for _, *others in self._tied for name in others}  # fmt: skip
            logging.getLogger(RELOAD_LOGGER).addFilter(_ExpectedReloadWarnings({NOTHING_MISSING, *copies}))
        worker.reload_weights(weights_path=weights_path)
        parameters = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for loaded, *others in self._tied:
                for name in others:
                    if parameters[name].data_ptr() != parameters[loaded].data_ptr():
                        parameters[name].copy_(parameters[loaded])
                    layer = model.get_submodule(name.rpartition(".")[0])
                    layer.quant_method.process_weights_after_loading(layer)

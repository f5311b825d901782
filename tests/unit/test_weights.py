"""Weights on shared storage: atomic versions, checksums, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from services.contracts import WeightsPublished, weights_folder
from services.weight_files import verify
from trainer.weights import save_version, version_dir


@pytest.fixture(scope="module")
def tiny_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def test_versions_are_written_announced_and_pruned(tiny_model: Qwen2ForCausalLM, tmp_path: Path) -> None:
    announcements = [save_version(tiny_model, None, tmp_path, "job-1", v, step=v * 10, keep=2) for v in (1, 2, 3)]
    assert not version_dir(tmp_path, "job-1", 1).exists(), "old versions are pruned"
    latest = announcements[-1]
    assert latest.version == 3 and latest.step == 30 and latest.uri.startswith("file://")
    folder = verify(latest)
    assert folder == version_dir(tmp_path, "job-1", 3).resolve()
    reloaded = Qwen2ForCausalLM.from_pretrained(folder)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert not list(tmp_path.rglob("*.partial")), "no staging folder is left behind"
    assert WeightsPublished.from_wire(latest.to_wire()).checksum == latest.checksum


def test_a_corrupted_version_fails_verification(tiny_model: Qwen2ForCausalLM, tmp_path: Path) -> None:
    published = save_version(tiny_model, None, tmp_path, "job-2", 1, step=1)
    weights_file = next(weights_folder(published.uri).glob("*.safetensors"))
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match their checksum"):
        verify(published)
    with pytest.raises(ValueError, match="not a file:// URI"):
        verify(published.model_copy(update={"uri": "s3://bucket/x"}))

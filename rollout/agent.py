"""The multi-turn search agent: one episode per (prompt, sample), token-in/token-out, with no I/O of its own.

An episode alternates model turns and environment insertions (shared/notes/SEARCH-R1.md, "The episode"):

    prompt | gen 1 (mask 1) | <information>...</information> (mask 0) | gen 2 (mask 1) | corrective (mask 0) | ...

- The request's turn prefix (optional, e.g. `<think>` for the few-shot prompt style) is inserted (mask 0) before
  every generation: the model continues from it, the reward sees it, the loss ignores it.
- Each turn the engine generates until `</search>` or `</answer>` (the stop string is kept), an end-of-sequence
  token (dropped: the episode goes on past it) or the per-turn token limit. The trajectory keeps the exact
  sampled ids: nothing the model produced is decoded and re-encoded.
- The first `<search>...</search>` or `<answer>...</answer>` of the turn is its action. `answer` ends the
  episode; `search` calls the injected retriever and appends the information block, truncated to the
  observation cap with the closing tag kept; anything else appends a short corrective message.
- After `max_turns` turns one last generation runs with search disabled (a search there is not executed).
- The model sees at most `max_context_tokens` per generation: its input is the newest
  `max_context_tokens - max_tokens_per_turn` tokens of prompt + response, so an engine with
  `max_model_len >= max_context_tokens` serves every turn. The prompt is capped at `max_prompt_tokens` (newest
  tokens kept) before the episode starts.

The engine (`Generator`), the tokenizer (`TextCodec`) and the retriever (`Retriever`) are injected, so many
episodes run concurrently on one event loop and the caller can batch their retrieval calls (see
`rollout.retrieval_client.BatchingRetriever`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np

from rollout.engines.base import GenerationResult, Generator, SamplingOptions
from services.contracts import EpisodeConfig, RolloutRequest, Trajectory, VersionSpan

SEARCH_STOP = "</search>"
ANSWER_STOP = "</answer>"
INFO_OPEN = "\n\n<information>"
INFO_CLOSE = "</information>\n\n"
ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)

# Our own wording. Inserted after a turn that held no complete <search> or <answer> block. It names the answer
# tags without writing them: the reward reads the last <answer> block of the whole response, and a complete one
# here would count as an (always wrong) answer of every episode that never answered.
CORRECTIVE_MESSAGE = (
    "\nThat was not a valid action. To look something up, write a query between <search> and </search>. "
    "To finish, write the final answer between the answer tags. Let me try again.\n"
)

Action = Literal["search", "answer"]


# --------------------------------------------------------------------------------------------------------
# Injected collaborators


class TextCodec(Protocol):
    """Text <-> token ids for the environment's insertions and for parsing actions."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class HFTextCodec:
    """A `TextCodec` over a Hugging Face tokenizer: no special tokens added on encode, none skipped on decode
    (so tags that are special tokens in a tokenizer still show up in the text the actions are parsed from)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


@dataclass(frozen=True)
class Document:
    """One retrieved passage. `contents` follows the corpus convention: the title on the first line (the
    reference keeps its quotes), the text after it."""

    id: str
    contents: str
    score: float | None = None

    @property
    def title(self) -> str:
        return self.contents.split("\n", 1)[0]

    @property
    def text(self) -> str:
        parts = self.contents.split("\n", 1)
        return parts[1] if len(parts) > 1 else ""


Retriever = Callable[[list[str], int], Awaitable[list[list[Document]]]]
"""`await retriever(queries, topk)` -> one list of documents per query, in order."""


def format_documents(documents: Sequence[Document]) -> str:
    """One line per passage: `Doc {i}(Title: {title}) {text}`, numbered from 1."""
    return "\n".join(f"Doc {i}(Title: {doc.title}) {doc.text}" for i, doc in enumerate(documents, start=1))


def without_end_token(result: GenerationResult) -> GenerationResult:
    """`result` less the end-of-sequence (or stop) token it ended on, as in the reference (which decodes turns
    without special tokens): a turn that ends so holds no action and the episode goes on, and the token would
    be trained on, read by the format check and seen in the next turn's input. A stop string is kept."""
    if result.finish_reason != "stop" or isinstance(result.stop_reason, str) or not result.token_ids:
        return result
    return replace(result, token_ids=result.token_ids[:-1], logprobs=result.logprobs[:-1])


def parse_action(text: str) -> tuple[Action | None, str]:
    """The first `<search>` or `<answer>` block of `text`: (kind, stripped content), or (None, "")."""
    match = ACTION_RE.search(text)
    if match is None:
        return None, ""
    return match.group(1), match.group(2).strip()  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Episode:
    """A finished episode: the capped prompt, the response with its loss mask and behaviour logprobs, the
    version spans of the generated ranges, and the counts the reward tier and dashboards use."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    version_spans: list[VersionSpan] = field(default_factory=list)
    turns: int = 0
    searches: int = 0
    valid_actions: int = 0
    finished: bool = False
    actions: list[str] = field(default_factory=list)  # per turn: "search", "answer", "invalid", "search_skipped"
    queries: list[str] = field(default_factory=list)
    answer: str | None = None
    truncated_observations: int = 0
    prompt_truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def _append(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None = None) -> None:
        self.response_ids.extend(int(t) for t in ids)
        self.loss_mask.extend([mask] * len(ids))
        self.logprobs.extend([0.0] * len(ids) if logprobs is None else (float(x) for x in logprobs))

    def _append_generation(self, result: GenerationResult) -> None:
        start = len(self.response_ids)
        self._append(result.token_ids, 1, result.logprobs)
        end = len(self.response_ids)
        if end == start:
            return
        last = self.version_spans[-1] if self.version_spans else None
        if last is not None and last.end == start and last.version == result.version:
            self.version_spans[-1] = VersionSpan(start=last.start, end=end, version=result.version)
        else:
            self.version_spans.append(VersionSpan(start=start, end=end, version=result.version))

    def to_trajectory(
        self,
        request: RolloutRequest,
        sample_index: int = 0,
        response_text: str = "",
        **fields_: Any,
    ) -> Trajectory:
        """The stream message for this episode of `request`."""
        return Trajectory(
            job_id=request.job_id,
            request_id=request.msg_id,
            prompt_uid=request.prompt_uid,
            sample_index=sample_index,
            prompt_ids=np.asarray(self.prompt_ids, dtype=np.int32),
            response_ids=np.asarray(self.response_ids, dtype=np.int32),
            loss_mask=np.asarray(self.loss_mask, dtype=np.uint8),
            logprobs=np.asarray(self.logprobs, dtype=np.float32),
            version_spans=list(self.version_spans),
            response_text=response_text,
            golden_answers=list(request.golden_answers),
            data_source=request.data_source,
            reward=request.reward,
            turns=self.turns,
            searches=self.searches,
            valid_actions=self.valid_actions,
            finished=self.finished,
            is_eval=request.is_eval,
            timings=dict(self.timings),
            **fields_,
        )


# --------------------------------------------------------------------------------------------------------
# The loop


class Agent:
    """Runs episodes against one engine, one tokenizer and one retriever; safe to use from many concurrent
    tasks (it keeps no per-episode state). How an episode plays is the `EpisodeConfig` each run is given."""

    def __init__(
        self,
        engine: Generator,
        codec: TextCodec,
        retriever: Retriever,
        retrieval_timeout_s: float = 60.0,
        corrective_message: str = CORRECTIVE_MESSAGE,
    ):
        if retrieval_timeout_s <= 0:
            raise ValueError(f"retrieval_timeout_s must be > 0, got {retrieval_timeout_s}")
        self.engine = engine
        self.codec = codec
        self.retriever = retriever
        self.retrieval_timeout_s = retrieval_timeout_s
        self._corrective_ids = codec.encode(corrective_message)
        self._info_close_ids = codec.encode(INFO_CLOSE)

    def _check(self, episode: EpisodeConfig) -> None:
        if len(self._info_close_ids) >= episode.max_obs_tokens:
            raise ValueError(
                f"max_obs_tokens ({episode.max_obs_tokens}) leaves no room beside the closing "
                f"{INFO_CLOSE!r} ({len(self._info_close_ids)} tokens)"
            )

    def observation_ids(self, documents: Sequence[Document], max_obs_tokens: int) -> tuple[list[int], bool]:
        """The information block for `documents` as token ids, at most `max_obs_tokens` long, always ending with
        the closing tag. Returns (ids, truncated)."""
        body = self.codec.encode(INFO_OPEN + format_documents(documents))
        budget = max_obs_tokens - len(self._info_close_ids)
        truncated = len(body) > budget
        return body[:budget] + self._info_close_ids, truncated

    def decode(self, ids: Sequence[int]) -> str:
        return self.codec.decode(ids)

    async def run(
        self,
        prompt_ids: Sequence[int],
        episode: EpisodeConfig | None = None,
        seed: int | None = None,
        turn_prefix_ids: Sequence[int] = (),
        search_enabled: bool = True,
    ) -> Episode:
        """Play one episode from `prompt_ids` by `episode`'s settings (the contract's defaults if None). `seed`
        (optional) seeds turn t with `seed + t`. `turn_prefix_ids` (optional) open every turn as an environment
        insertion (mask 0), e.g. an opened `<think>` block. `search_enabled` False: every search finds nothing."""
        cfg = episode or EpisodeConfig()
        self._check(cfg)
        started = time.perf_counter()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids must hold at least one token")
        played = Episode(prompt_ids=prompt[-cfg.max_prompt_tokens :])
        played.prompt_truncated = len(prompt) > cfg.max_prompt_tokens
        generate_s = retrieve_s = 0.0
        while True:
            forced_final = played.turns >= cfg.max_turns
            played._append(turn_prefix_ids, 0)
            context = (played.prompt_ids + played.response_ids)[-cfg.max_input_tokens :]
            sampling = SamplingOptions(
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=None if seed is None else seed + played.turns,
            )
            t0 = time.perf_counter()
            result = await self.engine.generate(context, sampling, (SEARCH_STOP, ANSWER_STOP), cfg.max_tokens_per_turn)
            result = without_end_token(result)
            generate_s += time.perf_counter() - t0
            played._append_generation(result)
            played.turns += 1

            action, content = parse_action(self.codec.decode(result.token_ids))
            if action == "answer":
                played.valid_actions += 1
                played.actions.append("answer")
                played.answer = content
                played.finished = True
                break
            if action == "search" and content:
                played.valid_actions += 1
                if forced_final:
                    played.actions.append("search_skipped")
                    break
                played.actions.append("search")
                played.queries.append(content)
                t0 = time.perf_counter()
                results = (
                    await asyncio.wait_for(self.retriever([content], cfg.topk), self.retrieval_timeout_s)
                    if search_enabled
                    else [[]]
                )
                retrieve_s += time.perf_counter() - t0
                if len(results) != 1:
                    raise RuntimeError(f"retriever returned {len(results)} result lists for 1 query")
                obs, truncated = self.observation_ids(results[0][: cfg.topk], cfg.max_obs_tokens)
                played.truncated_observations += int(truncated)
                played.searches += 1
                played._append(obs, 0)
                continue
            played.actions.append("invalid")
            if forced_final:
                break
            played._append(self._corrective_ids, 0)

        played.timings = {
            "generate_s": generate_s,
            "retrieve_s": retrieve_s,
            "total_s": time.perf_counter() - started,
        }
        return played

    async def run_request(self, request: RolloutRequest) -> list[Trajectory]:
        """All `n_samples` episodes of `request`, concurrently, as trajectories in sample order, each played by
        the request's `episode` settings."""
        prompt, prefix = request.prompt_ids.tolist(), request.turn_prefix_ids.tolist()
        episodes = await asyncio.gather(
            *(self.run(prompt, request.episode, turn_prefix_ids=prefix, search_enabled=request.search_enabled)
              for _ in range(request.n_samples))
        )  # fmt: skip
        # The reference's reward scores prompt + response; only that mode needs the prompt's text.
        with_prompt = request.reward.compat == "reference"
        return [
            episode.to_trajectory(
                request,
                sample_index=i,
                response_text=self.codec.decode(episode.response_ids),
                prompt_text=self.codec.decode(episode.prompt_ids) if with_prompt else "",
            )
            for i, episode in enumerate(episodes)
        ]

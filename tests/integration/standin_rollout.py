"""A stand-in rollout tier for learner tests, plus a runner for it and the real reward worker.

For each RolloutRequest it samples `n_samples` responses from the tiny model with the weights of the newest
WeightsPublished of the request's job (the base model before any), the way a rollout engine would:
- even samples: sampled tokens, then the first golden answer as `<answer> ... </answer>` (scores 1 under EM);
- odd samples: sampled tokens, an inserted `<information>` passage (loss mask 0), then a wrong answer.
Behaviour logprobs come from one forward pass of the same weights, so they match what the learner recomputes.
Every request seen is recorded (`requests`), with the policy version that served it (`served_versions`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from reward.worker import RewardSettings, build_worker
from services.config import Settings
from services.contracts import RolloutRequest, Trajectory, VersionSpan, WeightsPublished
from services.streams import DATA_FIELD, Output, Streams, connect
from services.worker import StreamWorker
from trainer.weights import verify

INSERTED = "<information> Doc 1(Title: x) some retrieved passage </information>"


@dataclass
class Policy:
    model: Any
    version: int


@dataclass
class StandinRollout:
    streams: Streams
    base_dir: str  # the base model's folder (served until the first WeightsPublished)
    max_new_tokens: int = 6
    requests: list[RolloutRequest] = field(default_factory=list)
    served_versions: dict[str, int] = field(default_factory=dict)  # request msg_id -> version used
    _policies: dict[str, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_dir)

    async def policy_for(self, job_id: str) -> Policy:
        rows = await self.streams.redis.xrevrange(self.streams.job(job_id, "weights"), count=1)
        version, folder = 0, self.base_dir
        if rows:
            published = WeightsPublished.from_wire(rows[0][1][DATA_FIELD])
            version, folder = published.version, str(verify(published))
        cached = self._policies.get(job_id)
        if cached is None or cached.version != version or not rows:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            cached = self._policies[job_id] = Policy(model, version)
        return cached

    async def handle(self, request: RolloutRequest) -> Sequence[Output]:
        policy = await self.policy_for(request.job_id)
        self.requests.append(request)
        self.served_versions[request.msg_id] = policy.version
        trajectories = [self.sample(request, policy, index) for index in range(request.n_samples)]
        return [Output(self.streams.reward, trajectory) for trajectory in trajectories]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    @torch.no_grad()
    def sample(self, request: RolloutRequest, policy: Policy, index: int) -> Trajectory:
        prompt = torch.from_numpy(request.prompt_ids.astype(np.int64))[None]
        sampling = request.episode
        greedy = sampling.temperature == 0
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens, min_new_tokens=1, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
            top_k=None, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
        )  # fmt: skip
        output = policy.model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
        # Random weights may sample tags; keep them out so that the answer below is the only one in the text.
        special = set(self.tokenizer.all_special_ids)
        sampled = [int(t) for t in output[0, prompt.shape[1] :] if int(t) not in special]
        if index % 2 == 0:
            pieces = [(sampled, 1), (self.encode(f"<answer> {request.golden_answers[0]} </answer>"), 1)]
        else:
            pieces = [(sampled, 1), (self.encode(INSERTED), 0), (self.encode("<answer> no idea </answer>"), 1)]
        response = [t for ids, _ in pieces for t in ids]
        mask = [m for ids, m in pieces for _ in ids]
        logprobs = self.logprobs(policy.model, prompt[0].tolist(), response, sampling.temperature or 1.0)
        logprobs = np.where(np.asarray(mask) == 1, logprobs, 0.0).astype(np.float32)
        return Trajectory(
            job_id=request.job_id, request_id=request.msg_id, prompt_uid=request.prompt_uid, sample_index=index,
            prompt_ids=request.prompt_ids, response_ids=np.asarray(response, dtype=np.int32),
            loss_mask=np.asarray(mask, dtype=np.uint8), logprobs=logprobs,
            version_spans=[VersionSpan(start=0, end=len(response), version=policy.version)],
            response_text=self.tokenizer.decode(response, skip_special_tokens=False),
            prompt_text=self.tokenizer.decode(request.prompt_ids, skip_special_tokens=False)
            if request.reward.compat == "reference" else "",
            golden_answers=request.golden_answers, data_source=request.data_source, turns=1 + index % 2,
            searches=index % 2, valid_actions=1 + index % 2, finished=True, reward=request.reward,
            is_eval=request.is_eval,
        )  # fmt: skip

    @staticmethod
    def logprobs(model: Any, prompt: list[int], response: list[int], temperature: float) -> np.ndarray:
        ids = torch.tensor([prompt + response])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
        picked = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])[:, 0]
        return picked.numpy()


class Tiers:
    """The stand-in rollout consumer and the real reward worker, on an event loop in a background thread."""

    def __init__(self, settings: Settings, base_dir: str) -> None:
        # Generation blocks the loop for a while: do not let the reward worker's pending entries look abandoned.
        self.settings = settings.model_copy(update={"reclaim_idle_ms": 60_000})
        self.base_dir = base_dir
        self.rollout: StandinRollout | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[StreamWorker] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="tiers", daemon=True)
        self.error: BaseException | None = None

    async def _main(self) -> None:
        streams = Streams(connect(self.settings), self.settings)
        try:
            self.rollout = StandinRollout(streams, self.base_dir)
            rollout_worker = StreamWorker(
                streams, stream=streams.rollout, group="rollout", message_type=RolloutRequest,
                handle=self.rollout.handle, concurrency=1, read_count=1,
            )  # fmt: skip
            reward_worker = build_worker(streams, RewardSettings(**self.settings.model_dump()))
            self._workers = [rollout_worker, reward_worker]
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await asyncio.gather(*(worker.run() for worker in self._workers))
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._ready.set()
            await streams.redis.aclose()

    def __enter__(self) -> Tiers:
        self._thread.start()
        self._ready.wait(60)
        if self.error is not None:
            raise RuntimeError("the stand-in tiers did not start") from self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None:
            for worker in self._workers:
                self._loop.call_soon_threadsafe(worker.request_stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the stand-in tiers did not stop"

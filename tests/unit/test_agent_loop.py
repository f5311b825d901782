"""The agent loop against a scripted engine and a character-level tokenizer: every position is predictable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from reward.scoring import FormatScores, check_format, extract_answer, format_reward
from rollout.agent import (
    CORRECTIVE_MESSAGE,
    INFO_CLOSE,
    INFO_OPEN,
    Agent,
    Document,
    format_documents,
    parse_action,
)
from rollout.engines.base import GenerationResult, SamplingOptions
from services.contracts import (
    EpisodeConfig,
    FormatScoreConfig,
    RewardConfig,
    RolloutRequest,
    Trajectory,
    VersionSpan,
)

ALT = 1_000_000  # ids >= ALT decode like id - ALT: a second spelling of every character


class CharCodec:
    """One token per character. The engine may emit `ALT + ord(c)`, which decodes to `c` too, so a loop that
    decoded and re-encoded the model's tokens would be caught."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i - ALT if i >= ALT else i) for i in ids)


class ScriptedEngine:
    """Returns the scripted turns in order, applying stop strings (kept) and max_tokens as an engine does."""

    def __init__(self, turns: list[str], versions: list[int] | None = None, alt_ids: bool = True):
        self.turns = list(turns)
        self.versions = versions
        self.alt_ids = alt_ids
        self.calls: list[dict] = []

    async def generate(self, prompt_ids, sampling: SamplingOptions, stop, max_tokens: int) -> GenerationResult:
        index = len(self.calls)
        self.calls.append({"prompt_ids": list(prompt_ids), "stop": tuple(stop), "max_tokens": max_tokens,
                           "sampling": sampling})  # fmt: skip
        text = self.turns[index] if index < len(self.turns) else self.turns[-1]
        ends = [(text.find(s) + len(s), s) for s in stop if s in text]
        cut, reason = min(ends) if ends else (len(text), None)  # the first stop string to complete
        text = text[:cut]
        finish = "stop" if reason else "length"
        if len(text) > max_tokens:
            text, finish, reason = text[:max_tokens], "length", None
        ids = [ALT + ord(c) if self.alt_ids else ord(c) for c in text]
        version = self.versions[index] if self.versions else 0
        await asyncio.sleep(0)
        return GenerationResult(
            token_ids=ids,
            logprobs=[-0.25 - 0.001 * i for i in range(len(ids))],
            finish_reason=finish,
            version=version,
            stop_reason=reason,
        )


class FakeRetriever:
    def __init__(self, docs: list[Document] | None = None):
        self.docs = docs or [
            Document("1", '"Paris"\nParis is the capital of France.', 0.9),
            Document("2", '"France"\nFrance is a country.', 0.8),
            Document("3", '"Seine"\nThe Seine flows through Paris.', 0.7),
            Document("4", '"Extra"\nnot returned with topk 3', 0.1),
        ]
        self.calls: list[tuple[list[str], int]] = []

    async def __call__(self, queries: list[str], topk: int) -> list[list[Document]]:
        self.calls.append((list(queries), topk))
        return [self.docs[:topk] for _ in queries]


codec = CharCodec()
PROMPT = codec.encode("Question: capital of France?\n")


def run(coro):
    return asyncio.run(coro)


def spans(mask: list[int]) -> list[tuple[int, int, int]]:
    """(start, end, value) runs of the mask."""
    out: list[tuple[int, int, int]] = []
    for i, m in enumerate(mask):
        if out and out[-1][2] == m and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1, m)
        else:
            out.append((i, i + 1, m))
    return out


def expected_obs(docs: list[Document]) -> str:
    return INFO_OPEN + format_documents(docs) + INFO_CLOSE


def test_search_then_answer_masks_line_up_with_inserted_spans():
    turn1 = "<think>need it</think><search>  capital of France </search>"
    turn2 = "<answer> Paris </answer>"
    engine, retriever = ScriptedEngine([turn1, turn2]), FakeRetriever()
    episode = run(Agent(engine, codec, retriever).run(PROMPT))

    obs = expected_obs(retriever.docs[:3])
    assert codec.decode(episode.response_ids) == turn1 + obs + turn2
    n1, n_obs, n2 = len(turn1), len(obs), len(turn2)
    assert spans(episode.loss_mask) == [(0, n1, 1), (n1, n1 + n_obs, 0), (n1 + n_obs, n1 + n_obs + n2, 1)]
    # the model's tokens are kept exactly as sampled (the alternative spelling), the inserted ones are ours
    assert all(t >= ALT for t, m in zip(episode.response_ids, episode.loss_mask, strict=True) if m == 1)
    assert all(t < ALT for t, m in zip(episode.response_ids, episode.loss_mask, strict=True) if m == 0)
    lp = np.asarray(episode.logprobs)
    assert np.all(lp[np.asarray(episode.loss_mask) == 0] == 0.0)
    assert np.all(lp[np.asarray(episode.loss_mask) == 1] < 0)
    assert lp[0] == pytest.approx(-0.25) and lp[n1 + n_obs] == pytest.approx(-0.25)
    assert retriever.calls == [(["capital of France"], 3)]
    assert (episode.turns, episode.searches, episode.valid_actions, episode.finished) == (2, 1, 2, True)
    assert episode.answer == "Paris" and episode.actions == ["search", "answer"]
    assert episode.version_spans == [
        VersionSpan(start=0, end=n1, version=0),
        VersionSpan(start=n1 + n_obs, end=n1 + n_obs + n2, version=0),
    ]
    assert obs.startswith('\n\n<information>Doc 1(Title: "Paris") Paris is the capital of France.\nDoc 2(')
    assert all(call["stop"] == ("</search>", "</answer>") for call in engine.calls)
    # the second turn sees everything so far
    assert engine.calls[1]["prompt_ids"] == PROMPT + episode.response_ids[: n1 + n_obs]


def test_stop_string_is_kept_and_ends_the_turn():
    engine = ScriptedEngine(["<search>a</search> text after the stop", "<answer>b</answer> more"])
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT))
    text = codec.decode(episode.response_ids)
    assert text.startswith("<search>a</search>\n\n<information>")
    assert text.endswith("</information>\n\n<answer>b</answer>")
    assert "text after" not in text


def test_only_the_first_action_counts():
    engine = ScriptedEngine(["<answer>first</answer>"])
    assert parse_action("x <search> q </search> <answer> a </answer>") == ("search", "q")
    assert parse_action("<answer>\n multi\nline </answer>") == ("answer", "multi\nline")
    assert parse_action("<search>unclosed") == (None, "")
    assert parse_action("<search>a</answer>") == (None, "")
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT))
    assert episode.answer == "first" and episode.finished


def test_observation_truncation_keeps_the_closing_tag():
    long_docs = [Document(str(i), f'"T{i}"\n' + "word " * 200) for i in range(3)]
    retriever = FakeRetriever(long_docs)
    engine = ScriptedEngine(["<search>q</search>", "<answer>x</answer>"])
    config = EpisodeConfig(max_obs_tokens=80)
    episode = run(Agent(engine, codec, retriever).run(PROMPT, config))
    obs_span = spans(episode.loss_mask)[1]
    assert obs_span[2] == 0 and obs_span[1] - obs_span[0] == 80
    obs = codec.decode(episode.response_ids[obs_span[0] : obs_span[1]])
    assert obs.startswith(INFO_OPEN + 'Doc 1(Title: "T0") word word')
    assert obs.endswith("word " + INFO_CLOSE) or obs.endswith(INFO_CLOSE)
    assert obs.count("</information>") == 1
    assert episode.truncated_observations == 1
    # a short observation is not truncated
    short = Agent(engine, codec, retriever).observation_ids([Document("1", '"T"\nshort')], config.max_obs_tokens)
    assert codec.decode(short[0]) == expected_obs([Document("1", '"T"\nshort')]) and short[1] is False


def test_each_episode_caps_its_observations_by_its_own_settings():
    long_docs = [Document(str(i), f'"T{i}"\n' + "word " * 200) for i in range(3)]
    engine = ScriptedEngine(["<search>q</search>", "<answer>x</answer>", "<search>q</search>", "<answer>x</answer>"])
    agent = Agent(engine, codec, FakeRetriever(long_docs))
    for cap in (40, 90):  # one agent, two episodes, each by its own cap
        episode = run(agent.run(PROMPT, EpisodeConfig(max_obs_tokens=cap)))
        start, end, value = spans(episode.loss_mask)[1]
        assert value == 0 and end - start == cap
    with pytest.raises(ValueError, match="max_obs_tokens"):
        run(agent.run(PROMPT, EpisodeConfig(max_obs_tokens=3)))


def test_forced_final_turn_after_max_turns_runs_without_search():
    engine = ScriptedEngine(["<search>again</search>"])
    retriever = FakeRetriever()
    episode = run(Agent(engine, codec, retriever).run(PROMPT, EpisodeConfig(max_turns=2)))
    assert len(engine.calls) == 3  # max_turns turns, then the forced final one
    assert len(retriever.calls) == 2
    assert episode.actions == ["search", "search", "search_skipped"]
    assert (episode.turns, episode.searches, episode.valid_actions, episode.finished) == (3, 2, 3, False)
    # the response ends with the model's last turn: nothing is inserted after it
    assert episode.loss_mask[-1] == 1
    assert codec.decode(episode.response_ids).endswith("</information>\n\n<search>again</search>")
    assert [s.end - s.start for s in episode.version_spans] == [len("<search>again</search>")] * 3


def test_max_turns_zero_is_a_single_answer_turn():
    engine = ScriptedEngine(["no tags at all"])
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT, EpisodeConfig(max_turns=0)))
    assert len(engine.calls) == 1
    assert episode.actions == ["invalid"] and not episode.finished
    assert episode.loss_mask == [1] * len("no tags at all")


def test_invalid_actions_get_a_corrective_message_and_the_turn_counts():
    turns = ["I think the answer is Paris.", "<search>   </search>", "<answer>Paris</answer>"]
    engine = ScriptedEngine(turns)
    retriever = FakeRetriever()
    episode = run(Agent(engine, codec, retriever).run(PROMPT, EpisodeConfig(max_turns=4)))
    assert retriever.calls == []  # an empty query is not a search
    assert episode.actions == ["invalid", "invalid", "answer"]
    assert (episode.turns, episode.searches, episode.valid_actions, episode.finished) == (3, 0, 1, True)
    assert (
        codec.decode(episode.response_ids) == turns[0] + CORRECTIVE_MESSAGE + turns[1] + CORRECTIVE_MESSAGE + turns[2]
    )
    a, c = len(turns[0]), len(CORRECTIVE_MESSAGE)
    b = len(turns[1])
    assert spans(episode.loss_mask) == [
        (0, a, 1),
        (a, a + c, 0),
        (a + c, a + c + b, 1),
        (a + c + b, a + 2 * c + b, 0),
        (a + 2 * c + b, a + 2 * c + b + len(turns[2]), 1),
    ]


def test_turn_token_limit_without_action_is_invalid():
    engine = ScriptedEngine(["<search>this query never closes because the turn ends", "<answer>x</answer>"])
    config = EpisodeConfig(max_tokens_per_turn=20, max_context_tokens=4096)
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT, config))
    assert engine.calls[0]["max_tokens"] == 20
    assert codec.decode(episode.response_ids[:20]) == "<search>this query n"
    assert episode.actions == ["invalid", "answer"]


def test_context_is_capped_at_the_newest_tokens():
    config = EpisodeConfig(max_context_tokens=150, max_tokens_per_turn=50, max_prompt_tokens=64, max_turns=3)
    engine = ScriptedEngine(["<search>q</search>"])
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT, config))
    full = PROMPT + episode.response_ids
    assert config.max_input_tokens == 100
    assert len(engine.calls) == len(episode.version_spans) == 4
    # each generation saw the newest 100 tokens of prompt + response as they stood when it started
    for call, span in zip(engine.calls, episode.version_spans, strict=True):
        assert call["prompt_ids"] == full[: len(PROMPT) + span.start][-100:]
        assert call["max_tokens"] == 50
    assert len(engine.calls[-1]["prompt_ids"]) == 100
    # the trajectory keeps every token even though the model saw only the newest ones
    assert len(episode.response_ids) > 100


def test_prompt_is_capped_at_max_prompt_tokens_keeping_the_end():
    long_prompt = codec.encode("x" * 300 + "Question: q?\n")
    engine = ScriptedEngine(["<answer>a</answer>"])
    episode = run(Agent(engine, codec, FakeRetriever()).run(long_prompt, EpisodeConfig(max_prompt_tokens=64)))
    assert episode.prompt_ids == long_prompt[-64:] and episode.prompt_truncated
    assert engine.calls[0]["prompt_ids"] == long_prompt[-64:]


def test_version_spans_follow_the_version_of_each_generation():
    engine = ScriptedEngine(["<search>a</search>", "<search>b</search>", "<answer>c</answer>"], versions=[3, 4, 4])
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT))
    gen_runs = [(s, e) for s, e, m in spans(episode.loss_mask) if m == 1]
    assert [(v.start, v.end) for v in episode.version_spans] == gen_runs
    assert [v.version for v in episode.version_spans] == [3, 4, 4]


def test_episode_maps_onto_the_trajectory_contract():
    request = RolloutRequest(
        job_id="job-1",
        prompt_uid="nq:7",
        prompt_ids=np.asarray(PROMPT),
        golden_answers=["Paris"],
        data_source="nq",
        policy_version=2,
        reward=RewardConfig(kind="em_format", format_scores=FormatScoreConfig(wrong_valid=0.3)),
    )
    engine = ScriptedEngine(["<search>q</search>", "<answer>Paris</answer>"], versions=[2, 2])
    agent = Agent(engine, codec, FakeRetriever())
    episode = run(agent.run(request.prompt_ids.tolist(), request.episode))
    trajectory = episode.to_trajectory(request, sample_index=3, response_text=agent.decode(episode.response_ids))
    again = Trajectory.from_wire(trajectory.to_wire())
    assert again.response_ids.tolist() == episode.response_ids
    assert again.loss_mask.tolist() == episode.loss_mask
    assert np.allclose(again.logprobs, episode.logprobs)
    assert again.oldest_version == 2 and again.finished and again.searches == 1 and again.sample_index == 3
    assert again.golden_answers == ["Paris"] and again.request_id == request.msg_id
    assert again.reward == request.reward  # the job's reward settings reach the reward tier
    assert set(again.timings) == {"generate_s", "retrieve_s", "total_s"}


def test_a_request_runs_all_its_samples_concurrently():
    request = RolloutRequest(
        job_id="job-1",
        prompt_uid="nq:8",
        prompt_ids=np.asarray(PROMPT),
        n_samples=3,
        episode={"max_turns": 1, "max_context_tokens": 1024, "max_prompt_tokens": 512, "temperature": 0.5,
                 "top_p": 0.9, "max_tokens_per_turn": 64},
    )  # fmt: skip

    class Recording(ScriptedEngine):
        async def generate(self, prompt_ids, sampling, stop, max_tokens):
            self.calls.append({"sampling": sampling, "max_tokens": max_tokens})
            await asyncio.sleep(0)
            ids = [ALT + ord(c) for c in "<answer>a</answer>"]
            return GenerationResult(ids, [-0.5] * len(ids), "stop", version=1, stop_reason="</answer>")

    engine = Recording([])
    trajectories = run(Agent(engine, codec, FakeRetriever()).run_request(request))
    assert [t.sample_index for t in trajectories] == [0, 1, 2]
    assert all(t.response_text == "<answer>a</answer>" and t.finished for t in trajectories)
    assert all(c["max_tokens"] == 64 and c["sampling"].temperature == 0.5 for c in engine.calls)
    assert all(c["sampling"].top_p == 0.9 for c in engine.calls)
    assert len(engine.calls) == 3


def test_a_turn_prefix_opens_every_turn_as_an_insertion_the_model_continues():
    prefix = codec.encode("<think>")
    request = RolloutRequest(job_id="j", prompt_uid="u", prompt_ids=np.asarray(PROMPT),
                             turn_prefix_ids=np.asarray(prefix))  # fmt: skip
    turns = [" need it </think><search> capital of France </search>", " found </think><answer> Paris </answer>"]
    engine, retriever = ScriptedEngine(turns), FakeRetriever()
    [trajectory] = run(Agent(engine, codec, retriever).run_request(request))
    obs = expected_obs(retriever.docs[:3])
    assert trajectory.response_text == "<think>" + turns[0] + obs + "<think>" + turns[1]
    assert check_format(trajectory.response_text).valid, "the reward sees the opened think blocks"
    p, t1, o, t2 = len(prefix), len(turns[0]), len(obs), len(turns[1])
    assert spans(trajectory.loss_mask.tolist()) == [
        (0, p, 0), (p, p + t1, 1), (p + t1, 2 * p + t1 + o, 0), (2 * p + t1 + o, 2 * p + t1 + o + t2, 1),
    ]  # fmt: skip
    assert trajectory.logprobs[:p].tolist() == [0.0] * p and trajectory.version_spans[0].start == p
    first, second = (call["prompt_ids"] for call in engine.calls)
    assert first == PROMPT + prefix and second[-p:] == prefix, "the model continues from each prefix"
    # Without a prefix the response starts with the model's first token, as before.
    plain = RolloutRequest(job_id="j", prompt_uid="u", prompt_ids=np.asarray(PROMPT))
    [trajectory] = run(Agent(ScriptedEngine(turns), codec, FakeRetriever()).run_request(plain))
    assert trajectory.response_text == turns[0] + obs + turns[1] and trajectory.loss_mask[: len(turns[0])].all()


def test_the_corrective_message_holds_no_answer_for_the_reward_to_read():
    """An episode that never answered must score as unanswered, not as the corrective's words."""
    response = "I am not sure." + CORRECTIVE_MESSAGE + "Still unsure."
    assert extract_answer(response) is None
    assert format_reward(response, ["Paris"]) == FormatScores().no_answer_invalid
    assert extract_answer(response + CORRECTIVE_MESSAGE + "<answer> Paris </answer>") == "Paris"


def test_a_greedy_episode_samples_at_temperature_zero_and_keeps_its_caps():
    episode = EpisodeConfig(temperature=0.7, top_p=0.9, max_tokens_per_turn=30)
    greedy = episode.greedy()
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)
    assert greedy.model_dump(exclude={"temperature", "top_p"}) == episode.model_dump(exclude={"temperature", "top_p"})
    engine = ScriptedEngine(["<answer>a</answer>"])
    request = RolloutRequest(job_id="j", prompt_uid="u", prompt_ids=np.asarray(PROMPT), episode=greedy)
    run(Agent(engine, codec, FakeRetriever()).run_request(request))
    assert engine.calls[0]["sampling"].greedy and engine.calls[0]["max_tokens"] == 30


def test_config_rejects_a_context_without_room_for_a_turn():
    with pytest.raises(ValueError, match="must exceed max_tokens_per_turn"):
        EpisodeConfig(max_context_tokens=500, max_tokens_per_turn=500, max_prompt_tokens=100)
    with pytest.raises(ValueError, match="max_obs_tokens"):
        run(Agent(ScriptedEngine(["x"]), codec, FakeRetriever()).run(PROMPT, EpisodeConfig(max_obs_tokens=5)))


def test_retrieval_timeout_is_enforced():
    async def slow(queries, topk):
        await asyncio.sleep(5)

    engine = ScriptedEngine(["<search>q</search>"])
    with pytest.raises(TimeoutError):
        run(Agent(engine, codec, slow, retrieval_timeout_s=0.05).run(PROMPT))


def test_many_episodes_run_concurrently_and_their_searches_overlap():
    in_flight, peak = 0, 0

    async def retriever(queries, topk):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return [[Document("1", '"T"\ntext')] for _ in queries]

    async def main():
        agents = [
            Agent(ScriptedEngine(["<search>q</search>", "<answer>a</answer>"]), codec, retriever) for _ in range(16)
        ]
        return await asyncio.gather(*(agent.run(PROMPT) for agent in agents))

    episodes = run(main())
    assert all(e.finished and e.searches == 1 for e in episodes)
    assert peak == 16


def test_only_reference_compat_requests_carry_the_prompt_text():
    """The reference's reward scores prompt + response, so those trajectories carry the (capped) prompt's text."""
    turns = ["<think> x </think><answer> Paris </answer>"]
    texts = {}
    for compat in ("ours", "reference"):
        request = RolloutRequest(job_id="j", prompt_uid="u", prompt_ids=np.asarray(PROMPT),
                                 reward=RewardConfig(compat=compat))  # fmt: skip
        [trajectory] = run(Agent(ScriptedEngine(turns), codec, FakeRetriever()).run_request(request))
        texts[compat] = trajectory.prompt_text
    assert texts == {"ours": "", "reference": codec.decode(PROMPT)}


def test_with_search_disabled_a_search_finds_nothing_and_the_retriever_is_not_called():
    """The no-search control of an eval: the loop runs as usual, but every information block is empty."""
    turn1 = "<think>need it</think><search> capital of France </search>"
    turn2 = "<answer> Lyon </answer>"
    engine, retriever = ScriptedEngine([turn1, turn2]), FakeRetriever()
    request = RolloutRequest(job_id="j", prompt_uid="u", prompt_ids=PROMPT, search_enabled=False, is_eval=True)
    [trajectory] = run(Agent(engine, codec, retriever).run_request(request))
    assert retriever.calls == []
    assert trajectory.response_text == turn1 + expected_obs([]) + turn2
    assert (trajectory.searches, trajectory.finished) == (1, True)


@pytest.mark.parametrize("stop_reason", [None, 0x2403])  # vLLM reports an EOS as None, a stop token by its id
def test_a_turn_that_ends_on_an_end_token_drops_it_and_the_episode_goes_on(stop_reason: int | None) -> None:
    """As the reference (which decodes turns without special tokens): the end token is neither trained on nor
    read by the format check, and the next turn does not see it."""
    eos = 0x2403  # decodes as a visible character, so a kept one would show in the text
    first = codec.encode("<think> hmm </think>")

    class EndsOnEos(ScriptedEngine):
        async def generate(self, prompt_ids, sampling, stop, max_tokens):
            if not self.calls:
                self.calls.append({"prompt_ids": list(prompt_ids)})
                return GenerationResult([*first, eos], [-0.1] * (len(first) + 1), "stop", 0, stop_reason)
            return await super().generate(prompt_ids, sampling, stop, max_tokens)

    engine = EndsOnEos(["<think> ok </think><answer> Paris </answer>"])
    episode = run(Agent(engine, codec, FakeRetriever()).run(PROMPT))
    assert eos not in episode.response_ids and episode.response_ids[: len(first)] == first
    assert len(episode.logprobs) == len(episode.response_ids) == len(episode.loss_mask)
    assert episode.actions == ["invalid", "answer"]
    assert eos not in engine.calls[1]["prompt_ids"]
    assert episode.response_ids[len(first) : len(first) + len(CORRECTIVE_MESSAGE)] == codec.encode(CORRECTIVE_MESSAGE)

"""`searchr1 demo`: train SmolLM2-135M-Instruct with GRPO on this machine, through the whole platform.

Data (`--data`): `generated` (the default), fictional people and towns whose facts exist only in their own corpus
(`searchr1.fictional`), so only search can answer and held-out entities test the skill, not memory; or `shared`,
a slice of ../shared/data (a few hundred real train questions, NQ and HotpotQA eval sets, and the corpus passages
that hold their answers plus distractors, so the index builds in minutes).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.contracts import PRESETS, JobEvent, JobState, deep_merge

DEMO_MODEL = "smollm2-135m-instruct"
SINGLE_HOP_QUESTIONS = 40  # the generated task's held-out questions the demo evaluates; two-hop: half as many


@dataclass
class DemoData:
    train: Path
    eval: list[Path]
    corpus: Path
    origin: str


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def from_shared_data(
    shared: Path,
    out: Path,
    n_train: int,
    n_eval: int,
    distractors: int,
    per_question: int = 3,
    seed: int = 0,
) -> DemoData:
    """A slice of the shared data kit: questions, and the passages that contain their answers (matched after the
    reward tier's answer normalisation)."""
    from reward.scoring import normalize_answer  # lazily: `searchr1` reads this module's defaults for its help

    def _normalise(text: str) -> str:
        return f" {normalize_answer(text)} "

    rng = random.Random(seed)
    train = rng.sample(_read_jsonl(shared / "train" / "train.jsonl"), n_train)
    evals = {name: rng.sample(_read_jsonl(shared / "eval" / f"{name}.jsonl"), n_eval) for name in
             ("nq_test", "hotpotqa_dev")}  # fmt: skip
    questions = train + [row for rows in evals.values() for row in rows]
    corpus = _read_jsonl(shared / "corpus" / "corpus.jsonl")
    rng.shuffle(corpus)
    normalised = [_normalise(p["contents"]) for p in corpus]
    relevant: list[dict[str, Any]] = []
    for question in questions:  # a few passages that hold each answer (yes/no answers are in none)
        answers = [_normalise(a) for a in question["golden_answers"]]
        answers = [a for a in answers if a.strip() not in ("", "yes", "no")]
        hits = (i for i, text in enumerate(normalised) if any(a in text for a in answers))
        relevant.extend(corpus[i] for _, i in zip(range(per_question), hits, strict=False))
    relevant = list({p["id"]: p for p in relevant}.values())
    chosen_ids = {p["id"] for p in relevant}
    others = [p for p in corpus if p["id"] not in chosen_ids]
    passages = relevant + rng.sample(others, min(distractors, len(others)))
    rng.shuffle(passages)
    _write_jsonl(out / "train.jsonl", train)
    eval_paths = []
    for name, rows in evals.items():
        _write_jsonl(out / f"{name}.jsonl", rows)
        eval_paths.append(out / f"{name}.jsonl")
    _write_jsonl(out / "corpus.jsonl", passages)
    origin = f"../shared/data: {n_train} train questions, {n_eval} per eval set, {len(passages)} passages"
    return DemoData(out / "train.jsonl", eval_paths, out / "corpus.jsonl", origin)


def fictional(out: Path, seed: int = 0, single_hop: int | None = None, two_hop: int | None = None) -> DemoData:
    """The generated task of `searchr1.fictional` for `seed`: its train questions, and the first `single_hop`
    (default SINGLE_HOP_QUESTIONS) and `two_hop` (default half as many, at least one) of its held-out questions (the
    demo's evals run greedily on every one, twice: with and without search; no two-hop set when `two_hop` is 0)."""
    from searchr1.fictional import generate

    single_hop = SINGLE_HOP_QUESTIONS if single_hop is None else single_hop
    two_hop = max(1, single_hop // 2) if two_hop is None else two_hop

    task = generate(seed)
    _write_jsonl(out / "train.jsonl", task.train)
    _write_jsonl(out / "fictional_single_hop.jsonl", task.eval_single_hop[:single_hop])
    evals = [out / "fictional_single_hop.jsonl"]
    if two_hop:
        _write_jsonl(out / "fictional_two_hop.jsonl", task.eval_two_hop[:two_hop])
        evals.append(out / "fictional_two_hop.jsonl")
    _write_jsonl(out / "corpus.jsonl", task.corpus)
    origin = (f"generated fictional people and towns (seed {seed}): {len(task.train)} train questions, "
              f"{single_hop} single-hop and {two_hop} two-hop held-out questions, "
              f"{len(task.corpus)} passages")  # fmt: skip
    return DemoData(out / "train.jsonl", evals, out / "corpus.jsonl", origin)


def demo_job(data: DemoData, steps: int, model: str = DEMO_MODEL, time_limit_s: float | None = None) -> dict[str, Any]:
    """The `cpu-small` preset on the demo's data and schedule: GRPO sized for two CPU cores, each choice measured
    (bench/results/make-demo-*, README):
    - a one-shot prompt (~200 tokens) and short turns; top-1 retrieval: with three passages the untrained model
      often copies another fact of the same entity (greedy EM 0.200 with top-3, 0.300 with top-1, seed 0);
    - sampling at temperature 0.5: at 1.0 the untrained 135M model almost never answers right (EM 0.00 on the
      generated task) and GRPO gets no signal;
    - the reference's exact-match reward: the format-aware one gives 0.2 to every well-formed wrong answer, which
      hides the gain in the reward curve (first-quarter reward ~0.2 whatever the model does);
    - 8 prompts x 6 samples, an update only on the groups whose rewards differ (`skip_uniform_groups`: the others
      carry no gradient; the first step often has few), two optimiser steps per step at a learning rate for a
      handful of steps (5e-5: 3 steps took EM 0.300 -> 0.675, seed 0); no KL term (no reference model to run)."""
    return deep_merge(PRESETS["cpu-small"], {
        "name": "demo-grpo",
        "model": model,
        "data": {
            "train": [{"path": str(data.train), "format": "jsonl"}],
            "eval": [{"path": str(p), "format": "jsonl"} for p in data.eval],
            "eval_without_search": True,
        },
        "schedule": {"total_steps": steps, "save_interval": steps, "eval_interval": steps, "eval_before_train": True,
                     "time_limit_s": time_limit_s},
    })  # fmt: skip


def planned_units(spec: dict[str, Any]) -> int:
    """The steps and evaluations of a job that trains all its steps, by the learner's rule: an eval before
    training, then one every `eval_interval` steps and one after the last step."""
    schedule, steps = spec["schedule"], spec["schedule"]["total_steps"]
    if not spec["data"]["eval"]:
        return steps
    after = sum(1 for step in range(1, steps + 1) if step % schedule["eval_interval"] == 0 or step == steps)
    return steps + int(schedule["eval_before_train"]) + after


class WorkDone:
    """How much of a job's work its events show, in units of one step or one evaluation. Progress events (episodes
    scored so far) move it through the unit in flight but never to its end: a step's update comes after its
    rollouts, so a unit ends only with its closing event (metrics for a step, eval for an evaluation)."""

    def __init__(self) -> None:
        self.units = 0
        self.steps = 0
        self.fraction = 0.0
        self.phase = ""

    @property
    def position(self) -> float:
        return self.units + self.fraction

    def apply(self, event: JobEvent) -> None:
        if event.event in ("metrics", "eval"):
            self.units += 1
            self.steps += event.event == "metrics"
            self.fraction, self.phase = 0.0, ""
        elif event.event == "progress":
            done, total = int(event.data["done"]), int(event.data["total"])
            self.fraction = min(done / total, 0.99) if total else 0.0
            self.phase = f"{event.data['phase']} {done}/{total}"


def follow(
    client: Any, job_id: str, total_steps: int | None
) -> tuple[JobState, list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow a job's events with a progress bar over its steps and evaluations (`total_steps` None: a time
    budget decides, so the bar counts steps, with no total and no ETA); returns (final state, metrics per step,
    eval results)."""
    from tqdm import tqdm

    metrics: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    state = JobState.QUEUED
    work = WorkDone()
    planned = None if total_steps is None else planned_units(client.get(job_id)["spec"])
    bar_format = None if planned is None else "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
    reward = ""
    with tqdm(total=planned, desc="training", unit="step", bar_format=bar_format) as bar:
        for event in client.events(job_id, follow=True):
            work.apply(event)
            if event.event == "metrics":
                metrics.append({"step": event.step, **event.data})
                reward = f"reward {event.data.get('reward_mean', 0):.3f}"
            elif event.event == "eval":
                evals.append({"step": event.step, **event.data})
                bar.write(f"eval at step {event.step}: " + ", ".join(f"{k}={v:.3f}" for k, v in event.data.items()))
            elif event.event == "state" and event.state and event.state is not state:
                state = event.state
                bar.write(f"job {job_id}: {state.value} {event.message}".rstrip())
            steps = "" if total_steps is None else f"step {work.steps}/{total_steps}"  # else tqdm counts them
            bar.set_postfix_str(", ".join(part for part in (steps, work.phase, reward) if part), refresh=False)
            bar.update((work.steps if planned is None else work.position) - bar.n)
    return state, metrics, evals

"""`searchr1 demo`: train SmolLM2-135M-Instruct with GRPO on this machine, through the whole platform.

Data: ../shared/data when it is there (a few hundred train questions, two eval sets, and the corpus passages
that hold their answers plus distractors, so the index builds in minutes); otherwise a small generated set of
fictional facts whose answers exist only in its own corpus, so only search can answer them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.contracts import JobEvent, JobState

DEMO_MODEL = "smollm2-135m-instruct"


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
    normalize: Callable[[str], str],
    per_question: int = 3,
    seed: int = 0,
) -> DemoData:
    """A slice of the shared data kit: questions, and the passages that contain their answers
    (`normalize` is the reward tier's answer normalisation, handed in by the composition root)."""

    def _normalise(text: str) -> str:
        return f" {normalize(text)} "

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


_PEOPLE = ["Alvera Quint", "Borin Maddox", "Cyra Vell", "Dorian Ashby", "Elowen Tarr", "Fenwick Doyle",
           "Gisela Marr", "Hollis Crane", "Ilse Varga", "Jasper Noon", "Kestrel Wynn", "Lorna Pike"]  # fmt: skip
_TOWNS = ["Westmarch", "Dunhollow", "Brightwater", "Cinderfall", "Ashgrove", "Mirecastle", "Pellridge", "Tormouth"]
_TRADES = ["glassblower", "cartographer", "clockmaker", "beekeeper", "shipwright", "astronomer"]


def generated(out: Path, seed: int = 0) -> DemoData:
    """Fictional people with a birthplace and a trade: the answers exist only in this corpus."""
    rng = random.Random(seed)
    passages, questions = [], []
    for i, person in enumerate(_PEOPLE):
        town, trade = rng.choice(_TOWNS), rng.choice(_TRADES)
        passages.append({"id": str(i), "contents": f'"{person}"\n{person} was a {trade} born in {town}.'})
        questions.append({"id": f"{i}-town", "question": f"In which town was {person} born?",
                          "golden_answers": [town], "source": "fictional:generated:searchr1"})  # fmt: skip
        questions.append({"id": f"{i}-trade", "question": f"What was the trade of {person}?",
                          "golden_answers": [trade], "source": "fictional:generated:searchr1"})  # fmt: skip
    rng.shuffle(questions)
    _write_jsonl(out / "train.jsonl", questions[:16])
    _write_jsonl(out / "fictional_eval.jsonl", questions[16:])
    _write_jsonl(out / "corpus.jsonl", passages)
    return DemoData(out / "train.jsonl", [out / "fictional_eval.jsonl"], out / "corpus.jsonl",
                    "generated fictional facts (no ../shared/data here)")  # fmt: skip


def demo_job(data: DemoData, steps: int, model: str = DEMO_MODEL, time_limit_s: float | None = None) -> dict[str, Any]:
    """A GRPO JobSpec sized for two CPU cores: small groups, few steps, a higher learning rate than the paper's
    (which is tuned for 500 steps of 512 prompts) so a handful of steps can move the policy at all."""
    return {
        "name": "demo-grpo",
        "model": model,
        "algorithm": {
            "name": "grpo", "group_size": 4, "prompts_per_step": 2, "mini_batch_size": 8, "micro_batch_size": 2,
            "actor_lr": 2e-6, "actor_warmup_ratio": 0.0,
        },
        "data": {
            "train": [{"path": str(data.train), "format": "jsonl"}],
            "eval": [{"path": str(p), "format": "jsonl"} for p in data.eval],
        },
        # Worked examples in the prompt: the untrained 135M model writes a valid first action 55-68% of the time
        # with them, under 1% with the instructions alone (bench/prompts.py). Prompts take 400-480 tokens;
        # the context holds the longest one with both turns, both results and the last turn.
        "rollout": {"prompt_style": "few_shot", "max_turns": 2, "max_tokens_per_turn": 64, "max_obs_tokens": 192,
                    "max_context_tokens": 1088, "max_prompt_tokens": 512, "temperature": 1.0, "top_p": 1.0,
                    "request_timeout_s": 900},
        # Format-aware EM (the reference's second paper): an untrained 135M model rarely writes a valid
        # <answer>, so plain EM gives every sample 0 and GRPO no signal; partial credit for structure does.
        "reward": {"kind": "em_format"},
        "resources": {"learner_workers": 1, "learner_cpus_per_worker": 1},
        "schedule": {"total_steps": steps, "save_interval": steps, "eval_interval": steps, "eval_before_train": True,
                     "time_limit_s": time_limit_s},
    }  # fmt: skip


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


def plot_rewards(metrics: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    rewards = [m["reward_mean"] for m in metrics]
    window = max(1, len(rewards) // 10)
    smoothed = [sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
                for i in range(len(rewards))]  # fmt: skip
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, rewards, marker="o", markersize=3, alpha=0.4, label="mean reward (format-aware EM)")
    axis.plot(steps, smoothed, label=f"mean reward, {window}-step moving average")
    if all("format_valid_ratio" in m for m in metrics):
        axis.plot(steps, [m["format_valid_ratio"] for m in metrics], linestyle="--", label="well-formed episodes")
    axis.set_xlabel("step")
    axis.set_ylabel("mean over the step's episodes")
    axis.set_title("searchr1 demo: GRPO on SmolLM2-135M-Instruct")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def print_results(evals: list[dict[str, Any]]) -> None:
    if not evals:
        print("no evaluation results")
        return
    first, last = evals[0], evals[-1]
    names = sorted(k for k in first if k.startswith("eval_em/"))
    print(f"{'data set':20} {'EM before':>10} {'EM after':>10}")
    for name in names:
        print(f"{name.split('/', 1)[1]:20} {first[name]:10.3f} {last.get(name, float('nan')):10.3f}")


def wait_for_api(url: str, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the API at {url} is not ready")

"""The `searchr1` command's subcommands. Tiers are imported lazily, per subcommand, so `searchr1 jobs` loads no tier."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from searchr1.demo import SINGLE_HOP_QUESTIONS
from services.api.evaluations import EVAL_SETS
from services.config import SHARED_DATA_DIR, Settings
from services.contracts import ContractError, JobState, deep_merge
from services.streams import Streams, connect
from services.telemetry import configure_logging


def _version(_: argparse.Namespace) -> int:
    print(f"searchr1 {importlib.metadata.version('searchr1')}")
    return 0


def _reward_serve(_: argparse.Namespace) -> int:
    from reward.worker import main as reward_main

    reward_main()
    return 0


def _api_serve(_: argparse.Namespace) -> int:
    from services.api.app import main as api_main

    api_main()
    return 0


def _parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """`a.b=3 c=x` -> {"a": {"b": 3}, "c": "x"}; values are read as JSON when they parse, else kept as text."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise ContractError(f"--set expects KEY.PATH=VALUE, got {assignment!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = overrides
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return overrides


def _print_job(job: dict[str, Any]) -> None:
    eta = f"  eta {job['eta_seconds']:.0f}s" if job.get("eta_seconds") else ""
    print(f"{job['id']:36} {job['state']:10} step {job['step']}/{job['total_steps']}{eta}  {job['message']}")


def _jobs(args: argparse.Namespace) -> int:
    from services.api.client import ApiError, JobsClient

    client = JobsClient(args.api)
    try:
        if args.action == "submit":
            if bool(args.file) == bool(args.preset):
                raise ContractError("give a job file or --preset NAME (not both)")
            overrides = _parse_assignments(args.set or [])
            if args.preset:
                body: dict[str, Any] = {"preset": args.preset, "overrides": overrides}
            else:
                body = deep_merge(_read_spec_file(args.file), overrides)
            _print_job(client.submit(body))
        elif args.action == "list":
            for job in client.list(args.state)["jobs"]:
                _print_job(job)
        elif args.action == "get":
            print(json.dumps(client.get(args.job_id), indent=2))
        elif args.action == "cancel":
            _print_job(client.cancel(args.job_id))
        elif args.action == "logs":
            for event in client.events(args.job_id, follow=args.follow):
                detail = event.state.value if event.state else json.dumps(event.data) if event.data else ""
                step = f" step {event.step}" if event.step is not None else ""
                print(f"[{event.event}]{step} {detail} {event.message}".rstrip())
    except ApiError as exc:
        print(f"searchr1: {exc}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    """The short form of the Search-R1 guides: the paper preset of an algorithm, with a model."""
    args.preset, args.file = f"paper-{args.algo}", None
    args.set = [f"model={args.model}", *(args.set or [])]
    args.action = "submit"
    return _jobs(args)


def _evaluation_body(args: argparse.Namespace) -> dict[str, Any]:
    """An EvaluationRequest from `searchr1 eval` options: each --dataset is a data kit name or a JSONL file."""
    if args.step is not None and args.job_id is None:
        raise ContractError("--step picks a checkpoint of --job JOB_ID; give --job too")
    body: dict[str, Any] = {"model": args.model} if args.model else {"job_id": args.job_id, "step": args.step}
    datasets, paths = [], []
    for value in args.dataset:
        if value in EVAL_SETS:
            datasets.append(value)
        elif value.endswith(".jsonl"):
            paths.append(str(Path(value).expanduser().resolve()))
        else:
            raise ContractError(f"--dataset {value!r} is neither a data set ({', '.join(EVAL_SETS)}) nor a .jsonl file")
    body.update(datasets=datasets, paths=paths, limit=args.limit, **({"name": args.name} if args.name else {}))
    return body


def _eval(args: argparse.Namespace) -> int:
    """Submit an evaluation, follow it with a progress bar, print exact match per data set."""
    from tqdm import tqdm

    from services.api.client import ApiError, JobsClient

    client = JobsClient(args.api)
    try:
        evaluation = client.submit_evaluation(_evaluation_body(args))
        evaluation_id = evaluation["id"]
        print(f"evaluation {evaluation_id}: {evaluation['model']}", file=sys.stderr)
        with tqdm(desc="evaluating", unit="question") as bar:
            for event in client.events(evaluation_id, follow=True):
                if event.event == "progress":
                    bar.total = int(event.data["total"])
                    bar.update(int(event.data["done"]) - bar.n)
                elif event.event == "state" and event.state is not None:
                    bar.write(f"{evaluation_id}: {event.state.value} {event.message}".rstrip(), file=sys.stderr)
        evaluation = client.evaluation(evaluation_id)
    except ApiError as exc:
        print(f"searchr1: {exc}", file=sys.stderr)
        return 1
    if evaluation["state"] != JobState.SUCCEEDED.value:
        print(f"searchr1: evaluation {evaluation_id} {evaluation['state']}: {evaluation['message']}", file=sys.stderr)
        return 1
    print(f"{'data set':20} {'EM':>6}")
    for name, em in (evaluation["results"] or {}).items():
        print(f"{name:20} {em:6.3f}")
    return 0


def _read_spec_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ContractError(f"cannot read job file {path}: {exc}") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"job file {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ContractError(f"job file {path} must hold a mapping (a JobSpec)")
    return spec


def _serve_module(module: str) -> Callable[[argparse.Namespace], int]:
    """`searchr1 <tier> serve`: run the tier's own entry point with the remaining arguments."""

    def run(args: argparse.Namespace) -> int:
        import runpy

        sys.argv = [module, *args.rest]
        runpy.run_module(module, run_name="__main__")
        return 0

    return run


PORT_NAMES = ("retriever", "rollout", "ray", "reward_metrics", "rollout_metrics", "learner_metrics")


def _port_overrides(assignments: Sequence[str]) -> dict[str, int]:
    """`--port rollout=18001` -> {"rollout_port": 18001}."""
    ports = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if name not in PORT_NAMES or not value.isdigit() or not 0 < int(value) < 65536:
            raise ContractError(f"--port expects NAME=PORT with NAME in {', '.join(PORT_NAMES)}, got {assignment!r}")
        ports[f"{name}_port"] = int(value)
    return ports


def _platform_config(args: argparse.Namespace) -> Any:
    from searchr1.embedded import PlatformConfig, cpu_rollout_dtype

    run_dir = Path(args.run_dir).resolve()
    return PlatformConfig(
        run_dir=run_dir, index_dir=Path(args.index or run_dir / "index").resolve(), model=args.model,
        engine=args.engine, api_port=args.api_port, retriever_mode=args.retriever_mode,
        retriever_link=args.retriever_link, **_port_overrides(args.port),
        rollout_dtype=cpu_rollout_dtype() if args.rollout_dtype == "auto" else args.rollout_dtype,
    )  # fmt: skip


def _ensure_redis(config: Any) -> tuple[str, Any]:
    """The Redis to use: SEARCHR1_REDIS_URL, else the machine's on 6379, else one of our own (kept running)."""
    from searchr1.embedded import ServiceSpec
    from searchr1.redis_server import DEFAULT_URL, answers, free_port, server_command

    url = os.environ.get("SEARCHR1_REDIS_URL")
    if url:
        if not answers(url):
            raise ContractError(f"SEARCHR1_REDIS_URL={url} does not answer")
        return url, None
    if answers(DEFAULT_URL):
        return DEFAULT_URL, None
    port = free_port()
    data = config.run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    command = server_command(port, data, appendonly=True)
    return f"redis://127.0.0.1:{port}/0", ServiceSpec("redis", command, None, grace_s=1.0)


def build_index_if_needed(corpus: Path, index_dir: Path) -> None:
    from retriever.build import main as build_main

    print(f"indexing {corpus} into {index_dir} (resumes; cached embeddings are reused)")
    if build_main(["--corpus", str(corpus), "--index", str(index_dir)]) != 0:
        raise ContractError(f"building the index of {corpus} failed")


def platform_up(config: Any, corpus: Path | None) -> str:
    """Start every tier of the embedded platform; returns the Redis URL the tiers use."""
    from searchr1.embedded import EmbeddedPlatform, platform_specs, write_prometheus_config

    if corpus is not None:
        build_index_if_needed(corpus, config.index_dir)
    redis_url, redis_spec = _ensure_redis(config)
    specs = platform_specs(config, redis_url)
    if redis_spec is not None:
        specs.insert(0, redis_spec)
    print(f"starting the embedded platform (logs under {config.run_dir / 'logs'})")
    EmbeddedPlatform(config.run_dir).up(specs)
    print(f"platform ready: API {config.api_url}")
    print(f"metrics of every tier: prometheus --config.file={write_prometheus_config(config)}")
    return redis_url


def _up(args: argparse.Namespace) -> int:
    config = _platform_config(args)
    platform_up(config, Path(args.corpus) if args.corpus else None)
    return 0


def _down(args: argparse.Namespace) -> int:
    from searchr1.embedded import EmbeddedPlatform

    stopped = EmbeddedPlatform(Path(args.run_dir).resolve()).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


DEMO_TRAIN_MINUTES = 9.0


def _demo(args: argparse.Namespace) -> int:
    """Prepare data, start the platform, train with GRPO, report EM before/after (with and without search), a
    reward curve and demo_report.json."""
    import dataclasses
    import time

    from searchr1 import demo_report
    from searchr1.demo import demo_job, fictional, follow, from_shared_data
    from searchr1.embedded import EmbeddedPlatform
    from services.api.client import JobsClient

    started = time.monotonic()
    config = _platform_config(args)
    shared = Path(args.shared_data)
    data_dir = config.run_dir / "demo-data" / (args.data if args.data == "shared" else f"generated-{args.seed}")
    if args.data == "shared":
        if not (shared / "corpus" / "corpus.jsonl").exists():
            raise ContractError(f"--data shared: no data kit at {shared} (its corpus/corpus.jsonl is missing)")
        data = from_shared_data(shared, data_dir, args.train_questions, args.eval_questions or 24, args.distractors,
                                seed=args.seed)  # fmt: skip
    else:
        data = fictional(data_dir, seed=args.seed, single_hop=args.eval_questions, two_hop=args.two_hop_questions)
    if args.index is None:  # one index per data set: a demo on other data must not search the last one's passages
        config = dataclasses.replace(config, index_dir=(config.run_dir / "index" / data_dir.name).resolve())
    print(f"data: {data.origin}")
    platform = EmbeddedPlatform(config.run_dir)
    started_here = not platform.running()
    if started_here:
        platform_up(config, data.corpus)
    try:
        client = JobsClient(config.api_url)
        time_limit_s = None if args.minutes is None else args.minutes * 60
        job = client.submit(demo_job(data, args.steps, args.model, time_limit_s=time_limit_s))
        budget = "" if args.minutes is None else f" or {args.minutes:g} minutes of training, whichever ends first"
        print(f"submitted {job['id']}: GRPO, {args.steps} steps{budget}; "
              f"follow with `searchr1 jobs logs {job['id']} -f`")  # fmt: skip
        state, metrics, evals = follow(client, job["id"], args.steps if args.minutes is None else None)
        report = demo_report.build_report(metrics, evals, time.monotonic() - started)
        print(demo_report.table(report))
        print(f"figures: {demo_report.write_json(report, config.run_dir / 'demo_report.json')}")
        title = f"searchr1 demo: GRPO on {args.model}, {args.data} data"
        print(f"picture: {demo_report.plot(metrics, evals, config.run_dir / 'reward_curve.png', title)}")
        return 0 if state is JobState.SUCCEEDED else 1
    finally:
        if started_here and not args.keep_running:
            platform.down()


def _system_streams(streams: Streams) -> list[tuple[str, str]]:
    return [(streams.rollout, "rollout"), (streams.reward, "reward")]


def _streams_stats(args: argparse.Namespace) -> int:
    """Length, lag, pending and dead letters of the work queues (or of one stream and group)."""
    settings = Settings.load()

    async def go() -> None:
        streams = Streams(connect(settings), settings)
        targets = [(args.stream, args.group)] if args.stream else _system_streams(streams)
        print(f"{'stream':40} {'group':12} {'length':>8} {'lag':>8} {'pending':>8} {'dead':>6}")
        for stream, group in targets:
            try:
                stats = await streams.stats(stream, group)
            except Exception as exc:  # a stream or group that does not exist yet
                print(f"{stream:40} {group:12} {'-':>8} {'-':>8} {'-':>8} {'-':>6}  ({exc})")
                continue
            dead = await streams.dead_letter_count(stream)
            print(f"{stream:40} {group:12} {stats.length:8} {stats.lag:8} {stats.pending:8} {dead:6}")
        await streams.aclose()

    asyncio.run(go())
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    """List a stream's dead letters, or replay them into the stream (the originals stay until replayed)."""
    settings = Settings.load()

    async def go() -> int:
        streams = Streams(connect(settings), settings)
        letters = await streams.dead_letters(args.stream, args.limit)
        for letter in letters:
            print(f"{letter.entry_id}  deliveries={letter.deliveries}  {letter.error}")
        if args.replay:
            await streams.replay(args.stream, letters)
            print(f"replayed {len(letters)} entries into {args.stream}")
        await streams.aclose()
        return 0

    return asyncio.run(go())


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searchr1", description="Search-R1 training platform")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("version", help="print the version").set_defaults(run=_version)

    reward = commands.add_parser("reward", help="the reward tier").add_subparsers(dest="action", required=True)
    reward.add_parser("serve", help="run a reward worker (config from SEARCHR1_* env)").set_defaults(run=_reward_serve)

    api = commands.add_parser("api", help="the jobs REST API").add_subparsers(dest="action", required=True)
    api.add_parser("serve", help="run the API (config from SEARCHR1_* env)").set_defaults(run=_api_serve)

    jobs = commands.add_parser("jobs", help="submit and follow training jobs").add_subparsers(
        dest="action", required=True
    )
    submit = jobs.add_parser("submit", help="submit a JobSpec file or a preset")
    submit.add_argument("file", nargs="?", help="a JobSpec as YAML or JSON")
    submit.add_argument("--preset", help="a named preset, e.g. paper-grpo")
    submit.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a field (repeatable)")
    listing = jobs.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state")
    for name, text in (("get", "show one job"), ("cancel", "cancel a job")):
        jobs.add_parser(name, help=text).add_argument("job_id")
    logs = jobs.add_parser("logs", help="print a job's events")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep following until the job ends")
    for sub in (submit, listing, logs, *(jobs.choices[n] for n in ("get", "cancel"))):
        sub.add_argument("--api", help="API URL (default $SEARCHR1_API_URL or http://127.0.0.1:8080)")
        sub.set_defaults(run=_jobs)

    train = commands.add_parser("train", help="submit a training job with the paper's preset")
    train.add_argument("--model", required=True, help="HF id, local path or offline registry name")
    train.add_argument("--algo", choices=["ppo", "grpo"], default="ppo")
    train.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a field (repeatable)")
    train.add_argument("--api", help="API URL")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a model or a job's checkpoint: greedy exact match")
    target = evaluate.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="HF id, local path or offline registry name")
    target.add_argument("--job", dest="job_id", metavar="JOB_ID", help="evaluate a checkpoint of this training job")
    evaluate.add_argument("--step", type=int, help="the checkpoint's step (default: the job's latest)")
    evaluate.add_argument(
        "--dataset", action="append", required=True, metavar="NAME|FILE.jsonl",
        help=f"a data set of the shared data kit ({', '.join(EVAL_SETS)}) or a JSONL file (repeatable)",
    )  # fmt: skip
    evaluate.add_argument("--limit", type=int, help="at most this many questions per data set")
    evaluate.add_argument("--name", help="a name for the evaluation (default: eval)")
    evaluate.add_argument("--api", help="API URL")
    evaluate.set_defaults(run=_eval)

    for tier, module in (("retriever", "retriever.app"), ("rollout", "rollout.serve")):
        tier_commands = commands.add_parser(tier, help=f"the {tier} tier").add_subparsers(dest="action", required=True)
        serve = tier_commands.add_parser("serve", help=f"run the {tier} tier (options are {module}'s)")
        serve.add_argument("rest", nargs=argparse.REMAINDER)
        serve.set_defaults(run=_serve_module(module))
    index = commands.add_parser("index", help="the retrieval index").add_subparsers(dest="action", required=True)
    build = index.add_parser("build", help="build or resume an index (options are retriever.build's)")
    build.add_argument("rest", nargs=argparse.REMAINDER)
    build.set_defaults(run=_serve_module("retriever.build"))

    def platform_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--run-dir", default="var/platform", help="logs, index, jobs and state (default var/platform)")
        sub.add_argument("--index", help="index folder (default RUN_DIR/index)")
        sub.add_argument("--model", default="smollm2-135m-instruct", help="the rollout model")
        sub.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
        sub.add_argument("--api-port", type=int, default=8080)
        sub.add_argument(
            "--rollout-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
            help="the rollout engine's weights; auto: bfloat16 where the CPU computes it natively, else float32",
        )  # fmt: skip
        sub.add_argument("--retriever-mode", choices=["dense", "sparse", "hybrid"], default="dense")
        sub.add_argument(
            "--retriever-link", metavar="URL", help="the rollout tier reaches the retriever here (e.g. a fault proxy)"
        )
        sub.add_argument(
            "--port",
            action="append",
            default=[],
            metavar="NAME=PORT",
            help=f"move a service to another port (repeatable); NAME is one of {', '.join(PORT_NAMES)}",
        )

    up = commands.add_parser("up", help="start the whole platform on this machine")
    platform_options(up)
    up.add_argument("--corpus", help="build the index from this corpus first (resumable)")
    up.set_defaults(run=_up)
    down = commands.add_parser("down", help="stop what `up` started")
    down.add_argument("--run-dir", default="var/platform")
    down.set_defaults(run=_down)
    demo = commands.add_parser("demo", help="train SmolLM2-135M with GRPO through the embedded platform")
    platform_options(demo)
    demo.add_argument(
        "--data", choices=["generated", "shared"], default="generated",
        help="generated: fictional people and towns only search can answer (default); shared: ../shared/data's real "
        "questions (NQ, HotpotQA) and a slice of its corpus",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=0, help="the generated task's seed (and the shared slice's)")
    demo.add_argument("--shared-data", default=str(SHARED_DATA_DIR))
    demo.add_argument("--steps", type=_positive_int, default=200, help="at most this many steps (see --minutes)")
    demo.add_argument(
        "--minutes", type=_positive_float, metavar="M", default=DEMO_TRAIN_MINUTES,
        help="stop training after the first step that ends past M minutes of training, then the final eval and "
        f"checkpoint (default {DEMO_TRAIN_MINUTES:g}: the demo takes 11 to 20 minutes on two cores)",
    )  # fmt: skip
    demo.add_argument("--train-questions", type=int, default=200)
    demo.add_argument(
        "--eval-questions", type=_positive_int, metavar="N",
        help=f"held-out questions: N single-hop and N/2 two-hop generated ones (default {SINGLE_HOP_QUESTIONS} and "
        f"{SINGLE_HOP_QUESTIONS // 2}), or N per shared eval set (default 24)",
    )  # fmt: skip
    demo.add_argument(
        "--two-hop-questions", type=_non_negative_int, metavar="N",
        help="generated two-hop held-out questions (default: half the single-hop ones; 0: no two-hop eval set)",
    )  # fmt: skip
    demo.add_argument("--distractors", type=int, default=500)
    demo.add_argument("--keep-running", action="store_true", help="leave the platform up afterwards")
    demo.set_defaults(run=_demo)

    streams = commands.add_parser("streams", help="inspect the Redis streams").add_subparsers(
        dest="action", required=True
    )
    stats = streams.add_parser("stats", help="length, lag, pending and dead letters")
    stats.add_argument("--stream", help="one stream (default: the work queues)")
    stats.add_argument("--group", default="reward", help="its consumer group")
    stats.set_defaults(run=_streams_stats)
    dead = streams.add_parser("dead-letters", help="list (or --replay) a stream's dead letters")
    dead.add_argument("stream", help="the stream whose dead letters to show, e.g. searchr1:reward")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--replay", action="store_true", help="put them back into the stream to be retried")
    dead.set_defaults(run=_dead_letters)
    return parser


_PASSTHROUGH = {("retriever", "serve"), ("rollout", "serve"), ("index", "build")}  # options go to the module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = tuple(argv[:2]) in _PASSTHROUGH  # argparse's REMAINDER refuses a first argument that is an option
    args = build_parser().parse_args(argv[:2] if passthrough else argv)
    if passthrough:
        args.rest = argv[2:]
    configure_logging()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        code = run(args)
        sys.stdout.flush()  # a reader that went away is noticed here, not in the interpreter's exit
        return code
    except ContractError as exc:
        print(f"searchr1: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `searchr1 jobs list | head -1`: the reader has what it wanted. Stop quietly with the status a process
        # ended by SIGPIPE has, and point stdout at /dev/null so the exit's own flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

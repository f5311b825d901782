"""The `searchr1` command: the one composition root. Tiers are imported lazily, per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.config import Settings
from services.contracts import ContractError, deep_merge
from services.streams import DATA_FIELD, KIND_FIELD, Streams, connect


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
            dead = await streams.redis.xlen(streams.dead_letter_stream(stream))
            print(f"{stream:40} {group:12} {stats.length:8} {stats.lag:8} {stats.pending:8} {dead:6}")
        await streams.redis.aclose()

    asyncio.run(go())
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    """List a stream's dead letters, or replay them into the stream (the originals stay until replayed)."""
    settings = Settings.load()

    async def go() -> int:
        streams = Streams(connect(settings), settings)
        dead_stream = streams.dead_letter_stream(args.stream)
        rows = await streams.redis.xrange(dead_stream, count=args.limit)
        for entry_id, fields in rows:
            error = fields.get(b"error", b"").decode(errors="replace")
            deliveries = fields.get(b"deliveries", b"?").decode()
            print(f"{entry_id.decode()}  deliveries={deliveries}  {error}")
            if args.replay:
                async with streams.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(args.stream, {KIND_FIELD: fields[KIND_FIELD], DATA_FIELD: fields[DATA_FIELD]})
                    pipe.xdel(dead_stream, entry_id)
                    await pipe.execute()
        if args.replay:
            print(f"replayed {len(rows)} entries into {args.stream}")
        await streams.redis.aclose()
        return 0

    return asyncio.run(go())


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ContractError as exc:
        print(f"searchr1: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `searchr1` command: the one composition root. Tiers are imported lazily, per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import sys
from collections.abc import Callable, Sequence

from services.config import Settings
from services.contracts import ContractError
from services.streams import DATA_FIELD, KIND_FIELD, Streams, connect


def _version(_: argparse.Namespace) -> int:
    print(f"searchr1 {importlib.metadata.version('searchr1')}")
    return 0


def _reward_serve(_: argparse.Namespace) -> int:
    from reward.worker import main as reward_main

    reward_main()
    return 0


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

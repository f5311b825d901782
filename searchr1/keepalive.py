"""Keep one tier running, as Kubernetes' restartPolicy: Always does: `python -m searchr1.keepalive FILE -- CMD...`.

The child runs in this process's group (so `down` ends both); when it exits for any reason but our own SIGTERM
it is started again after a backoff that doubles from 1 s up to 30 s and starts over once a run has lasted a
minute. A child that ends within its first seconds the very first time is a broken start, not a crash: we exit
with its status so `up` reports it. Every restart is counted in FILE (the count, one line) and logged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

BACKOFF_S = (1.0, 30.0)
STEADY_S = 60.0  # a run this long resets the backoff
FIRST_START_S = 5.0  # the first run ending sooner is a failed start


def restarts(count_file: Path) -> int:
    """How often the service of `count_file` was restarted (0 before its first restart)."""
    try:
        return int(count_file.read_text())
    except (OSError, ValueError):
        return 0


def keep_alive(count_file: Path, command: list[str]) -> int:
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True  # the signal reached the whole group, the child too: it drains and exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    count_file.write_text("0")
    wait_s, count = BACKOFF_S[0], 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        ran_s = time.monotonic() - started
        if stopping:
            return code
        if count == 0 and ran_s < FIRST_START_S:
            return code
        if ran_s >= STEADY_S:
            wait_s = BACKOFF_S[0]
        count += 1
        count_file.write_text(str(count))
        print(f"keepalive: {command[:3]} exited with {code} after {ran_s:.1f} s; restart {count} in {wait_s:g} s",
              flush=True)  # fmt: skip
        deadline = time.monotonic() + wait_s
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        wait_s = min(wait_s * 2, BACKOFF_S[1])


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m searchr1.keepalive COUNT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    return keep_alive(Path(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Liveness checks and the one stopper for processes and process groups we started (learners, embedded tiers)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable


def reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie (and look alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, timeout_s: float, collect: Callable[[], object] | None = None) -> None:
    """End a process group: SIGTERM (workers drain), up to `timeout_s` for it to go, then SIGKILL.

    `collect` reaps the group leader while waiting (a `Popen.poll` of ours); by default its pid is reaped, so a
    leader that exited does not stay a zombie and keep the group alive."""
    collect = collect or (lambda: reap(pgid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid) and time.monotonic() < deadline:
        collect()
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    collect()

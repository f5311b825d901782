"""Liveness checks for processes and process groups we started (learners, embedded tiers)."""

from __future__ import annotations

import contextlib
import os


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

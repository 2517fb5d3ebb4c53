"""The writer of unfinished work (a streaming answer, a running job): which process it is, and whether it lives.

Such a row records its writer as (pid, start time). Opening the store finishes only the work whose writer is
gone, so another Baton process (or another connection of this one) opening the same file never touches an
answer that is still streaming or a job that is still running. The start time tells a live writer apart from a
new process that was given the pid of a dead one.
"""

from __future__ import annotations

import os

import psutil

#: Seconds two readings of one process's start time may differ (psutil adds the boot time, which the kernel
#: reports in whole seconds and recomputes from the wall clock on every reading).
START_TOLERANCE_S = 1.0

_this: tuple[int, float] | None = None


def this_process() -> tuple[int, float]:
    """(pid, start time in seconds since the epoch) of this process, to record as a row's writer."""
    global _this
    pid = os.getpid()
    if _this is None or _this[0] != pid:  # computed once (again in a forked child)
        _this = (pid, psutil.Process(pid).create_time())
    return _this


def is_alive(pid: int | None, started: float | None) -> bool:
    """Whether the writer recorded as `pid` started at `started` (seconds since the epoch) still runs.

    No pid (a row written before writers were recorded): False. No start time (a job of schema 2 or 3, which
    recorded the pid only): the old rule, a live process other than this one. Otherwise: a process with
    that pid exists, is not a zombie, and started within `START_TOLERANCE_S` of `started`. A process that
    may not be inspected (permission denied) counts as alive. Never raises.
    """
    if pid is None:
        return False
    if started is None:
        return pid != os.getpid() and _pid_exists(pid)
    try:
        process = psutil.Process(pid)
        return (abs(process.create_time() - started) <= START_TOLERANCE_S
                and process.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, ValueError, OverflowError):  # ZombieProcess included; a damaged row's pid
        return False
    except (psutil.AccessDenied, OSError):
        return True


def _pid_exists(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid)
    except (ValueError, OverflowError):  # a damaged row's pid
        return False

"""The helper processes that tie the app of ``mechakit run`` to the sidecar's life.

Run as a script (``python -S app_guard.py launch|watch ...``), by
:mod:`mechakit.runtime.app_process`; it imports only light stdlib modules so it starts fast.

``launch PARENT -- COMMAND...`` (Linux): arm the parent-death signal and exec the app in the
same process. Doing it here rather than in a ``preexec_fn`` keeps mechakit from ``fork()``-ing
a process full of gRPC and asyncio threads (which also makes gRPC log about its fork
handlers); the app is then started with ``posix_spawn``/``vfork``.

``watch TARGET group|process GRACE``: wait for the end of stdin, a pipe only mechakit writes.
A byte first means mechakit stopped the app itself; a bare end means mechakit died, so
SIGTERM the target, and SIGKILL it if it still runs ``GRACE`` seconds later.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DONE = b"x"
"""What mechakit writes to the watchdog once the app and its group are gone."""
POLL = 0.05
"""Seconds between checks whether processes sent SIGTERM are gone."""


def launch(parent: int, command: list[str]) -> None:
    """Become ``command``, to be SIGKILLed by the kernel when ``parent`` dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    prctl.restype = ctypes.c_int
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # kept across exec (not set-user-ID)
    if os.getppid() != parent:  # mechakit died before the signal was armed
        os._exit(128 + signal.SIGKILL)
    # What Python ignores at startup, as subprocess resets it for a child (restore_signals).
    for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"error: cannot start {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        os._exit(127)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group runs, zombies aside.

    ``killpg`` counts a zombie, and zombies are not always reaped: an orphan's new parent may
    be a pid 1 that never waits (in a container), or mechakit itself as pid 1. On Linux
    ``/proc`` tells them apart.
    """
    if not signal_group(pgid, 0):
        return False
    if not sys.platform.startswith("linux"):
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp.
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; whether it (still) exists."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_process(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def process_alive(pid: int) -> bool:
    return signal_process(pid, 0)


def watch(target: int, group: bool, grace: float) -> None:
    """The watchdog: at the end of stdin without a word from mechakit, stop ``target``."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if os.read(0, 1) == DONE:
        return
    send = signal_group if group else signal_process
    running: Callable[[int], bool] = group_alive if group else process_alive
    if not send(target, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while running(target) and time.monotonic() < deadline:
        time.sleep(POLL)
    if running(target):
        send(target, signal.SIGKILL)


def _main(argv: list[str]) -> None:
    if argv[0] == "launch" and argv[2] == "--":
        launch(int(argv[1]), argv[3:])
    elif argv[0] == "watch":
        watch(int(argv[1]), argv[2] == "group", float(argv[3]))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} launch PARENT -- COMMAND... | watch ...")


if __name__ == "__main__":
    _main(sys.argv[1:])

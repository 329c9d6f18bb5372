"""The app process of ``mechakit run``: started so that it cannot outlive the sidecar.

A ``kill -9`` of ``mechakit run`` gives it no chance to stop the app, which would then keep
running and keep its port. Three things prevent that:

* On Linux the app gets a parent-death signal (``PR_SET_PDEATHSIG``, SIGKILL), armed between
  spawn and exec by the ``launch`` step of :mod:`mechakit.runtime.app_guard`, so the kernel
  kills it when mechakit dies, however it dies.
* The app runs in a process group of its own, so signals passed on to it and the shutdown
  reach the processes it starts too (a shell's children). The exception is a ``mechakit run``
  in the foreground of a terminal: there the app stays in mechakit's group so that it can
  read the terminal (``breakpoint()``, prompts) and gets Ctrl-C from it, as with ``dapr run``.
* A watchdog process (``app_guard watch``, in a session of its own) waits for the end of a
  pipe only mechakit holds. If the pipe closes without mechakit saying it is done, mechakit
  died: the watchdog stops the app's process group (or, off Linux, the app itself). It runs
  where the parent-death signal is not enough: on Linux for an app with its own group (the
  app's children get no parent-death signal), elsewhere always.

Best effort remains: the parent-death signal is dropped when the app execs a set-user-ID
program, and a process that leaves the app's group (``setsid``, a daemon) is not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence

from mechakit.runtime import app_guard

GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when stopping the app or what it left running."""
GUARD = os.path.abspath(app_guard.__file__)
"""The helper script, run by path: ``python -m`` would import mechakit and its dependencies."""
HAS_PDEATHSIG = sys.platform.startswith("linux")


class AppProcess:
    """The running app: its process, whether it leads its own group, and its watchdog."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        own_group: bool,
        watchdog: asyncio.subprocess.Process | None,
        watchdog_pipe: int | None,
    ) -> None:
        self.process = process
        self.own_group = own_group
        self._watchdog = watchdog
        self._watchdog_pipe = watchdog_pipe

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the app, and with its own group every process in it (as a terminal would)."""
        if self.process.returncode is not None:
            return
        # Until asyncio has reaped the app, its pid (and so its group id) cannot be reused.
        with contextlib.suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def close(self, log: logging.Logger, grace: float = GRACE) -> None:
        """Stop the app if it runs, then what it left in its group, then dismiss the watchdog.

        The watchdog is dismissed last, so a mechakit killed meanwhile still takes the app along.
        """
        if self.process.returncode is None:
            self.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                log.warning("the app did not stop within %gs of SIGTERM: killing it", grace)
                self.kill()
                await self.process.wait()
        # A group id is not given to another process while a process of the group lives.
        pgid = self.process.pid
        if self.own_group and app_guard.group_alive(pgid):
            log.info("processes started by the app are still running: sending them SIGTERM")
            app_guard.signal_group(pgid, signal.SIGTERM)
            for _ in range(int(grace / app_guard.POLL)):
                if not app_guard.group_alive(pgid):
                    break
                await asyncio.sleep(app_guard.POLL)
            if app_guard.group_alive(pgid):
                app_guard.signal_group(pgid, signal.SIGKILL)
                log.warning("processes started by the app outlived SIGTERM by %gs: killed", grace)
        await self._dismiss_watchdog()

    async def _dismiss_watchdog(self) -> None:
        if self._watchdog_pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._watchdog_pipe, app_guard.DONE)
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        if self._watchdog is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watchdog.wait(), 1)
            self._watchdog = None


async def start_app(
    command: Sequence[str], env: Mapping[str, str], log: logging.Logger
) -> AppProcess:
    """Start ``command`` tied to this process's life; an ``OSError`` if it cannot start.

    Call it from the thread that lives as long as mechakit (the event loop's): asyncio spawns
    from the calling thread, and Linux sends the parent-death signal when the *thread* that
    spawned the app ends, not the process.
    """
    _check_runnable(command[0], env)
    own_group = not _in_terminal_foreground()
    argv = launch_argv(command, os.getpid()) if HAS_PDEATHSIG else list(command)
    process = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), process_group=0 if own_group else None
    )
    watchdog: asyncio.subprocess.Process | None = None
    pipe: int | None = None
    if own_group or not HAS_PDEATHSIG:
        try:
            watchdog, pipe = await _start_watchdog(process.pid, own_group)
        except OSError as exc:
            log.warning("no watchdog for the app (it may outlive a killed mechakit): %s", exc)
    return AppProcess(process, own_group, watchdog, pipe)


def launch_argv(command: Sequence[str], parent: int) -> list[str]:
    """``command`` behind the launcher that arms its parent-death signal (Linux).

    ``-S -s -P``: no site-packages and no script folder on ``sys.path``, for a fast start
    that imports only the stdlib; the environment (hence ``PYTHONCOERCECLOCALE``, the one
    setting that changes the environment passed on) is read as mechakit's interpreter read it.
    """
    return [sys.executable, "-S", "-s", "-P", GUARD, "launch", str(parent), "--", *command]


def _check_runnable(program: str, env: Mapping[str, str]) -> None:
    """Raise the ``OSError`` exec would, before the launcher hides it behind an exit code."""
    if os.sep in program:
        found = os.path.isfile(program) and os.access(program, os.X_OK)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _in_terminal_foreground() -> bool:
    """Whether mechakit's group is the foreground of the terminal on its stdin."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


async def _start_watchdog(pid: int, group: bool) -> tuple[asyncio.subprocess.Process, int]:
    """The watchdog of ``pid``, and the write end of the pipe it waits on."""
    read_end, write_end = os.pipe()  # not inherited by the app: os.pipe() is close-on-exec
    try:
        watchdog = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            GUARD,
            "watch",
            str(pid),
            "group" if group else "process",
            str(GRACE),
            stdin=read_end,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # out of reach of Ctrl-C and of a kill of mechakit's group
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return watchdog, write_end

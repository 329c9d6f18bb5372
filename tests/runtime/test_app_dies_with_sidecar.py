"""The app of ``mechakit run`` does not outlive it: real process trees, real signals.

A killed sidecar used to orphan the app, which kept running and kept its port.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mechakit.runtime.app_process import launch_argv

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

DEADLINE = 30.0
"""Generous bound for startup and for a process to go away; polled, not a speed test."""

APP = """
import os, socket, sys, time
assert os.environ["DAPR_HTTP_PORT"] != "0" and os.environ["DAPR_GRPC_PORT"] != "0"
server = socket.create_server(("127.0.0.1", 0))
with open(sys.argv[1] + ".tmp", "w") as file:
    file.write(f"{os.getpid()} {server.getsockname()[1]}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""
"""Binds a port, writes ``<pid> <port>`` to the file named by its argument, sleeps."""

TERMINAL_FOREGROUND = (
    "import sys\n"
    "from mechakit.runtime import app_process\n"
    "app_process._in_terminal_foreground = lambda: True\n"
    "from mechakit.runtime.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)
"""``mechakit`` as if run in the foreground of a terminal: the app shares its process group."""


def shell(path: Path, *, then: str = "wait") -> list[str]:
    """``sh`` starting :data:`APP` in the background: the app is a grandchild of mechakit."""
    return ["sh", "-c", f'"$2" -c "$0" "$1" & {then}', APP, str(path), sys.executable]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie nobody reaps (pid 1 of a container may not) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    return True


def dead(pid: int) -> bool:
    return not alive(pid)


def port_free(port: int) -> bool:
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {DEADLINE}s")
        time.sleep(0.05)


class Sidecar:
    """``mechakit run`` in a session of its own, with its log in a file."""

    def __init__(self, tmp_path: Path, app: list[str], *, in_terminal: bool = False) -> None:
        self.log = tmp_path / "mechakit.log"
        self.ready = tmp_path / "app.ready"
        self.pids: list[int] = []
        """The app's processes seen, for the clean-up of a failed test."""
        module = ["-c", TERMINAL_FOREGROUND] if in_terminal else ["-m", "mechakit.runtime.cli"]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, *module, "run", "--app-id", "app", "--dapr-http-port", "0",
                 "--dapr-grpc-port", "0", "--", *app],
                env={**os.environ, "MECHAKIT_HOME": str(tmp_path / "home")},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )  # fmt: skip

    def logs(self) -> str:
        return self.log.read_text()

    def wait_for_app(self) -> tuple[int, int]:
        """The pid and port :data:`APP` wrote once it listens."""

        def up() -> bool:
            assert self.process.poll() is None, self.logs()
            return self.ready.exists()

        eventually(up, "the app did not start")
        pid, port = map(int, self.ready.read_text().split())
        self.pids.append(pid)
        return pid, port

    def app_pid(self) -> int:
        """The pid of mechakit's direct child, from its log."""
        line = next(line for line in self.logs().splitlines() if "app started (pid " in line)
        pid = int(line.split("app started (pid ")[1].split(")")[0])
        self.pids.append(pid)
        return pid


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    """Whatever a test starts is killed when it ends, passed or not (orphans of a failure too)."""
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sidecar.process.pid, signal.SIGKILL)
        sidecar.process.wait(DEADLINE)
        for pid in sidecar.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def kill_sidecar_and_check_app_gone(sidecar: Sidecar, pids: list[int], port: int) -> None:
    os.kill(sidecar.process.pid, signal.SIGKILL)
    sidecar.process.wait(DEADLINE)
    for pid in pids:
        eventually(functools.partial(dead, pid), f"process {pid} outlived the killed sidecar")
    eventually(lambda: port_free(port), f"port {port} was not freed")


@pytest.mark.parametrize("in_terminal", [False, True], ids=["own-group", "terminal-foreground"])
def test_the_app_dies_when_the_sidecar_is_killed(
    tmp_path: Path, sidecars: list[Sidecar], in_terminal: bool
) -> None:
    if in_terminal and not sys.platform.startswith("linux"):
        pytest.skip("only Linux has a parent-death signal; elsewhere a watchdog is the fallback")
    app = [sys.executable, "-c", APP, str(tmp_path / "app.ready")]
    sidecar = Sidecar(tmp_path, app, in_terminal=in_terminal)
    sidecars.append(sidecar)
    pid, port = sidecar.wait_for_app()
    assert pid == sidecar.app_pid()
    assert not port_free(port)
    kill_sidecar_and_check_app_gone(sidecar, [pid], port)


def test_processes_the_app_started_die_when_the_sidecar_is_killed(
    tmp_path: Path, sidecars: list[Sidecar]
) -> None:
    sidecar = Sidecar(tmp_path, shell(tmp_path / "app.ready"))
    sidecars.append(sidecar)
    grandchild, port = sidecar.wait_for_app()
    shell_pid = sidecar.app_pid()
    assert grandchild != shell_pid
    kill_sidecar_and_check_app_gone(sidecar, [shell_pid, grandchild], port)


def test_a_normal_exit_passes_the_code_through_and_ends_what_the_app_left_running(
    tmp_path: Path, sidecars: list[Sidecar]
) -> None:
    exit_when_ready = 'while [ ! -e "$1" ]; do sleep 0.05; done; exit 5'
    sidecar = Sidecar(tmp_path, shell(tmp_path / "app.ready", then=exit_when_ready))
    sidecars.append(sidecar)
    grandchild, port = sidecar.wait_for_app()
    assert sidecar.process.wait(DEADLINE) == 5, sidecar.logs()
    assert "app exited with code 5" in sidecar.logs()
    eventually(
        functools.partial(dead, grandchild), "the app's background process outlived mechakit"
    )
    assert port_free(port)


def test_sigterm_reaches_the_processes_the_app_started(
    tmp_path: Path, sidecars: list[Sidecar]
) -> None:
    sidecar = Sidecar(tmp_path, shell(tmp_path / "app.ready"))
    sidecars.append(sidecar)
    grandchild, port = sidecar.wait_for_app()
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(DEADLINE) == 128 + signal.SIGTERM, sidecar.logs()
    assert "SIGTERM received: passing it on to the app" in sidecar.logs()
    assert "outlived SIGTERM" not in sidecar.logs()
    eventually(functools.partial(dead, grandchild), "the app's background process outlived SIGTERM")
    assert port_free(port)


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

READS_ITS_PDEATHSIG = """
import ctypes, os
value = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(value))  # PR_GET_PDEATHSIG
print(os.getpid(), value.value)
"""


@linux_only
def test_the_launcher_becomes_the_app_with_its_parent_death_signal_armed() -> None:
    launched = subprocess.Popen(
        launch_argv([sys.executable, "-c", READS_ITS_PDEATHSIG], os.getpid()),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = launched.communicate(timeout=DEADLINE)
    assert out.split() == [str(launched.pid), str(int(signal.SIGKILL))]


@linux_only
def test_the_launcher_gives_the_app_the_signal_dispositions_subprocess_would() -> None:
    """Python ignores SIGPIPE at startup; the app must not inherit that (``yes | head``)."""
    status = subprocess.run(
        launch_argv(["cat", "/proc/self/status"], os.getpid()),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    ).stdout
    ignored = int(
        next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16
    )
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


@linux_only
def test_the_launcher_does_not_start_the_app_when_the_parent_is_already_gone(
    tmp_path: Path,
) -> None:
    """A parent pid that is not the launcher's parent is what a parent dead before prctl is."""
    marker = tmp_path / "started"
    code = subprocess.call(
        launch_argv(["touch", str(marker)], os.getpid() + 1_000_000), timeout=DEADLINE
    )
    assert code == 128 + signal.SIGKILL
    assert not marker.exists()

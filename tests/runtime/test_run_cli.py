"""``mechakit run`` as a real process on a free port, and ``mechakit init``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mechakit.conformance.backends import free_port
from mechakit.runtime.cli import main

WriteFiles = Callable[..., Path]
STARTUP = 20.0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("MECHAKIT_HOME", str(folder))
    return folder


def mechakit(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "mechakit.runtime.cli", *args]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MECHAKIT_HOME": str(home), **extra}


def wait_healthy(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"{base}/v1.0/healthz", timeout=1).status_code == 204:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail("mechakit run did not become healthy in time")


@pytest.fixture
def served(home: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``mechakit run`` with the built-in components and no app, until the test ends."""
    port = free_port()
    process = subprocess.Popen(
        mechakit("run", "--app-id", "svc", "--dapr-http-port", str(port), home=home),
        env=env_for(home, DAPR_API_TOKEN="t0ken"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=STARTUP)


def test_run_serves_the_built_in_components_over_tcp_and_stops_on_sigterm(
    served: tuple[str, subprocess.Popen[str]], home: Path
) -> None:
    base, process = served
    token = {"dapr-api-token": "t0ken"}
    assert httpx.get(f"{base}/v1.0/metadata").status_code == 401
    saved = httpx.post(
        f"{base}/v1.0/state/statestore", json=[{"key": "k", "value": 1}], headers=token
    )
    assert saved.status_code == 204
    got = httpx.get(f"{base}/v1.0/state/statestore/k", headers=token)
    assert got.json() == 1 and got.headers["etag"]
    names = {
        c["name"]: c["type"]
        for c in httpx.get(f"{base}/v1.0/metadata", headers=token).json()["components"]
    }
    assert names == {
        "statestore": "state.sqlite",
        "pubsub": "pubsub.in-memory",
        "lockstore": "lock.in-memory",
    }
    assert (home / "state.db").exists()
    process.send_signal(signal.SIGTERM)
    _, logs = process.communicate(timeout=STARTUP)
    assert process.returncode == 0
    assert "component 'statestore' (state.sqlite/v1) ready" in logs
    assert "Dapr HTTP API listening on http://127.0.0.1:" in logs


APP = """
import os, sys, httpx
base = "http://127.0.0.1:" + os.environ["DAPR_HTTP_PORT"]
assert os.environ["APP_ID"] == "orders" and os.environ["DAPR_GRPC_PORT"]
assert httpx.get(base + "/v1.0/healthz/outbound").status_code == 204
assert httpx.post(base + "/v1.0/state/store", json=[{"key": "a", "value": "b"}]).status_code == 204
print("app saw", httpx.get(base + "/v1.0/state/store/a").json())
sys.exit(7)
"""


def test_run_starts_the_app_with_the_ports_and_passes_its_exit_code_through(
    resources: WriteFiles, component: Callable[..., str], home: Path, tmp_path: Path
) -> None:
    folder = resources(
        state=component("store", "state.sqlite", ("connectionString", str(tmp_path / "a.db")))
    )
    result = subprocess.run(
        mechakit("run", "--app-id", "orders", "--resources-path", str(folder),
                 "--dapr-http-port", str(free_port()), "--", sys.executable, "-c", APP, home=home),
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 7, result.stderr
    assert "app saw b" in result.stdout
    assert "app exited with code 7" in result.stderr


ARGV_APP = """
import json, os, sys
print(json.dumps({"app_id": os.environ["APP_ID"], "argv": sys.argv[1:]}))
"""


def test_the_app_command_may_follow_the_flags_without_a_double_dash(home: Path) -> None:
    result = subprocess.run(
        mechakit("run", "--app-id", "orders", "--dapr-http-port", str(free_port()),
                 "--enable-app-health-check", sys.executable, "-c", ARGV_APP,
                 "-p", "5", "--app-id", "other", "--", "tail", home=home),
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"app_id": "orders", "argv": ["-p", "5", "--app-id", "other", "--", "tail"]}


@pytest.mark.parametrize(
    ("argv", "flags", "command"),
    [
        (["--enable-metrics", "false", "node", "app.js"], {"enable_metrics": False}, ["node", "app.js"]),
        (["-a", "x", "-p3000", "node", "-p", "1"], {"app_id": "x", "app_port": 3000}, ["node", "-p", "1"]),
        (["--app-i", "x", "--log-as-json=true"], {"app_id": "x", "log_as_json": True}, []),
        (["--app-port", "-1", "--", "sh", "-c", "x"], {"app_port": None}, ["sh", "-c", "x"]),
    ],
    ids=["bool-value", "short-forms", "abbreviated", "double-dash"],
)  # fmt: skip
def test_the_first_word_that_is_no_flag_or_value_starts_the_app_command(
    argv: list[str], flags: dict[str, object], command: list[str]
) -> None:
    from mechakit.runtime.cli import build_parser

    namespace = build_parser().parse_args(["run", *argv])
    assert {name: getattr(namespace, name) for name in flags} == flags
    assert namespace.app_command == command


SLEEPER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("ready", flush=True)
time.sleep(60)
"""


def test_sigterm_is_passed_on_to_the_app_and_its_code_comes_back(home: Path) -> None:
    process = subprocess.Popen(
        mechakit("run", "--app-id", "a", "--dapr-http-port", str(free_port()), "--",
                 sys.executable, "-c", SLEEPER, home=home),
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=STARTUP)
        assert process.returncode == 3
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_run_fails_fast_with_the_manifest_error(
    resources: WriteFiles, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = resources(bad="kind: Component\nmetadata: {name: x}\nspec: {type: state.nope}\n")
    code = main(["run", "--app-id", "a", "--resources-path", str(folder), "--dapr-http-port", "0"])
    assert code == 1
    assert "error:" in capsys.readouterr().err


def test_run_reports_a_port_in_use(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main(["run", "--app-id", "a", "--dapr-http-port", str(port)])
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_init_writes_the_defaults_once_and_force_overwrites(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init"]) == 0
    folder = home / "components"
    assert sorted(p.name for p in folder.iterdir()) == [
        "lockstore.yaml",
        "pubsub.yaml",
        "statestore.yaml",
    ]
    (folder / "pubsub.yaml").write_text("# mine\n")
    assert main(["init"]) == 0
    assert (folder / "pubsub.yaml").read_text() == "# mine\n"
    assert "kept" in capsys.readouterr().out
    assert main(["init", "--force"]) == 0
    assert "pubsub.in-memory" in (folder / "pubsub.yaml").read_text()
    assert main(["validate", str(folder)]) == 0

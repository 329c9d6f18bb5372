"""``mechakit run -f``: the three apps of ``data/multi_app`` (order → stock and payment), each
with its own sidecar, started from one Dapr multi-app run template and stopped with SIGINT.

One run is shared by the tests of the running system (starting three sidecars is the slow
part); the last of them stops it. The template's fixed app ports are replaced by free ones.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mechakit.conformance.backends import free_port
from mechakit.runtime.cli import main
from mechakit.runtime.cli.multi_app import load_template

DATA = Path(__file__).with_name("data") / "multi_app"
STARTUP = 120.0
"""Seconds for three sidecars to come up on a loaded machine (not a timing assertion)."""
APPS = ("order", "stock", "payment")


@dataclass
class MultiAppRun:
    folder: Path
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    http_ports: dict[str, int]

    def console(self) -> str:
        return self.stdout.read_text(errors="replace")

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            console = self.console()
            if text in console:
                return console
            if self.process.poll() is not None:
                pytest.fail(f"mechakit run -f exited ({self.process.returncode}): {self.output()}")
            time.sleep(0.1)
        pytest.fail(f"{text!r} never appeared: {self.output()}")

    def output(self) -> str:
        return f"{self.console()}\n{self.stderr.read_text(errors='replace')}"


def _copy_template(tmp_path: Path) -> Path:
    """The test system in ``tmp_path`` (log files go into its app folders), free app ports,
    run with this interpreter."""
    folder = tmp_path / "system"
    shutil.copytree(DATA, folder)
    template = folder / "dapr.yaml"
    text = template.read_text().replace('"python3"', json.dumps(sys.executable))
    text = re.sub(r"appPort: \d+", lambda _: f"appPort: {free_port()}", text)
    template.write_text(text)
    return folder


def _start(template: Path, home: Path) -> MultiAppRun:
    """``mechakit run -f template`` (a file, or a folder with its dapr.yaml)."""
    folder = template if template.is_dir() else template.parent
    env = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
    env["MECHAKIT_HOME"] = str(home)  # the sidecars' shared name resolution file
    stdout, stderr = folder / "console.out", folder / "console.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "mechakit.runtime.cli", "run", "-f", str(template)],
            stdout=out,
            stderr=err,
            env=env,
        )
    return MultiAppRun(folder, process, stdout, stderr, {})


def _descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (sidecars, apps, watchdogs), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiAppRun]:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to follow the processes of the run")
    tmp_path = tmp_path_factory.mktemp("multi-app")
    run = _start(_copy_template(tmp_path), tmp_path / "home")
    try:
        console = run.wait_for("3 app(s) running")
        for app_id in APPS:
            found = re.search(rf"app '{app_id}' is up: HTTP port (\d+)", console)
            assert found, console
            run.http_ports[app_id] = int(found.group(1))
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait()


def test_every_app_comes_up_behind_its_own_sidecar_on_distinct_free_ports(
    system: MultiAppRun,
) -> None:
    assert len(set(system.http_ports.values())) == 3
    for app_id, port in system.http_ports.items():
        metadata = httpx.get(f"http://127.0.0.1:{port}/v1.0/metadata", timeout=10).json()
        assert metadata["id"] == app_id
        assert {c["name"] for c in metadata["components"]} == {"statestore", "pubsub"}


def test_an_order_reaches_stock_and_payment_through_their_sidecars(system: MultiAppRun) -> None:
    order = {"id": "order-1", "item": "widget", "qty": 2}
    answer = httpx.post(
        f"http://127.0.0.1:{system.http_ports['order']}/v1.0/invoke/order/method/orders",
        json=order,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "order": "order-1",
        "stock": {"reserved": 2, "caller": "order", "saved": order},
        "payment": {"paid": "order-1"},
    }
    # payment published 'paid' through its sidecar, which delivered it to payment's route
    system.wait_for("== APP - payment == payment event received: order-1")


def test_app_output_is_prefixed_on_the_console_and_logged_where_the_template_says(
    system: MultiAppRun,
) -> None:
    console = system.wait_for("== APP - order == order greets stderr")
    assert "== APP - order == order listening on port" in console  # stdout and stderr alike
    assert "== APP - payment == payment greets stderr" in console
    assert "== APP - stock ==" not in console  # appLogDestination: file
    assert "== SIDECAR - payment == " in console  # daprdLogDestination: fileAndConsole
    assert "== SIDECAR - order ==" not in console  # default: file only

    logs = {app_id: system.folder / app_id / ".dapr" / "logs" for app_id in APPS}
    (stock_app,) = logs["stock"].glob("stock_app_*.log")
    assert "== APP - stock == stock greets stderr" in stock_app.read_text()
    (order_app,) = logs["order"].glob("order_app_*.log")
    assert "== APP - order == order listening on port" in order_app.read_text()
    assert not list(logs["payment"].glob("*_app_*.log"))  # appLogDestination: console
    for app_id in APPS:
        (sidecar,) = logs[app_id].glob(f"{app_id}_daprd_*.log")
        text = sidecar.read_text()
        assert "Dapr HTTP API listening on" in text
        assert "== APP" not in text and "greets stderr" not in text  # the app's lines apart


def test_sigint_stops_every_app_and_sidecar(system: MultiAppRun) -> None:
    children = _descendants(system.process.pid)
    assert len(children) >= 6  # three sidecars and their three apps
    system.process.send_signal(signal.SIGINT)
    assert system.process.wait(60) == 0, system.output()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)], system.output()
    assert "SIGINT received: stopping every app and its sidecar" in system.console()


def test_a_sidecar_that_fails_to_start_stops_the_others_and_exits_1(tmp_path: Path) -> None:
    folder = _copy_template(tmp_path)
    broken = folder / "stock" / ".dapr" / "resources"  # stock's own resources win over common
    broken.mkdir(parents=True)
    (broken / "bad.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bad\n"
        "spec:\n  type: state.nonexistent\n  version: v1\n  metadata: []\n"
    )
    run = _start(folder, tmp_path / "home")
    try:
        assert run.process.wait(STARTUP) == 1, run.output()
    finally:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
    assert "the sidecar of app 'stock' failed to start: it exited with code 1" in run.output()
    assert "every app and its sidecar stopped" in run.console()


def test_an_app_that_exits_is_reported_the_others_run_on_and_a_kill_takes_them_all(
    tmp_path: Path,
) -> None:
    folder = _copy_template(tmp_path)
    python = json.dumps(sys.executable)
    (folder / "two.yaml").write_text(
        textwrap.dedent(
            f"""
            version: 1
            common:
              resourcesPaths: ["./resources"]
            apps:
              - appID: oneshot
                appDirPath: ./order/
                command: [{python}, "../service.py", "oneshot"]
              - appDirPath: ./stock/
                appPort: {free_port()}
                command: [{python}, "../service.py", "stock"]
            """
        )
    )
    run = _start(folder / "two.yaml", tmp_path / "home")
    try:
        console = run.wait_for("2 app(s) running")
        found = re.search(r"app 'stock' is up: HTTP port (\d+)", console)
        assert found, console
        run.wait_for("app 'oneshot' exited with code 3; its sidecar stopped; the other apps keep")
        assert "== APP - oneshot == oneshot done" in run.console()
        metadata = httpx.get(f"http://127.0.0.1:{found.group(1)}/v1.0/metadata", timeout=10)
        assert metadata.json()["id"] == "stock"
        children = _descendants(run.process.pid)
        assert children
        run.process.kill()  # no chance to stop anything: the parent-death signals do
        run.process.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], run.output()
    finally:
        if run.process.poll() is None:
            run.process.kill()


# validation: the template is refused before anything starts ----------------------------------


def _template(tmp_path: Path, text: str) -> Path:
    for app in ("order", "stock"):
        (tmp_path / app).mkdir(exist_ok=True)
    file = tmp_path / "dapr.yaml"
    file.write_text(textwrap.dedent(text).lstrip())
    return file


def _refusal(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", "-f", str(path)]) == 1
    return capsys.readouterr().err


def test_an_app_without_appdirpath_is_refused_naming_file_app_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _template(
        tmp_path,
        """
        version: 1
        apps:
          - appID: order
            appDirPath: ./order
          - appID: stock
            command: ["python3", "app.py"]
        """,
    )
    error = _refusal(file, capsys)
    assert f"{file}:5: app 'stock': apps[1].appDirPath: required, a non-empty string" in error


def test_an_unknown_template_version_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _template(tmp_path, "version: 2\napps:\n  - appDirPath: ./order\n")
    assert f"{file}:1: run template: version: unsupported version 2 (supported: 1)" in _refusal(
        file, capsys
    )


def test_two_apps_with_one_app_id_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _template(
        tmp_path,
        """
        version: 1
        apps:
          - appDirPath: ./order
          - appID: order
            appDirPath: ./stock
        """,
    )
    error = _refusal(file, capsys)
    assert f"{file}:4: app 'order': apps[1].appID: duplicate app id 'order'" in error


def test_a_wrong_flag_value_is_refused_as_its_template_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _template(
        tmp_path,
        "version: 1\napps:\n  - appDirPath: ./order\n    logLevel: loud\n",
    )
    error = _refusal(file, capsys)
    assert "app 'order': apps[0].logLevel: argument --log-level: invalid choice: 'loud'" in error


def test_a_folder_means_its_dapr_yaml_and_common_values_yield_to_the_app_s(
    tmp_path: Path,
) -> None:
    _template(
        tmp_path,
        """
        version: 1
        common:
          logLevel: debug
          env: {MODE: shared, DEBUG: true}
        apps:
          - appDirPath: ./order
            logLevel: warn
            env: {MODE: own}
            command: ["python3", "app.py"]
          - appDirPath: ./stock
            appPrt: 3000
        """,
    )
    template = load_template(str(tmp_path))
    order, stock = template.apps
    assert (order.app_id, stock.app_id) == ("order", "stock")
    assert "--log-level=warn" in order.flags and "--log-level=debug" in stock.flags
    assert order.env == {"MODE": "own", "DEBUG": "true"}
    assert order.command == ("python3", "app.py") and stock.command == ()
    assert (order.app_dir, order.app_log, order.sidecar_log) == (
        tmp_path / "order",
        "fileAndConsole",
        "file",
    )
    assert template.warnings == (
        f"{tmp_path / 'dapr.yaml'}:11: app 'stock': unknown field 'appPrt' (did you mean 'appPort'?)",
    )


def test_a_template_on_stdin_has_its_paths_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _template(tmp_path, "version: 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("version: 1\napps:\n  - appDirPath: order\n"))
    (order,) = load_template("-").apps
    assert (order.app_id, order.app_dir) == ("order", tmp_path / "order")

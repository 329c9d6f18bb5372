"""``pip install mechakit`` is the light core a driver depends on: no grpcio, uvicorn,
starlette, httpx or dapr. Everything but ``mechakit run`` works without them, and ``run``
says in one line which extra to install.

Two proofs: a subprocess of this environment with those packages blocked on the import
path (fast), and a fresh virtualenv holding only mechakit's wheel and the dependencies its
metadata declares, from the package index pip is configured with (a few seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ("grpc", "uvicorn", "starlette", "httpx", "dapr")
SIDECAR_DISTRIBUTIONS = {"grpcio", "uvicorn", "starlette", "httpx", "dapr", "protobuf"}
HINT = "mechakit run needs the sidecar extra: pip install 'mechakit[sidecar]'"

COMPONENTS = {
    "statestore.yaml": """\
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.sqlite
          version: v1
          metadata:
            - {name: connectionString, value: "{folder}/state.db"}
        """,
    "pubsub.yaml": """\
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: pubsub}
        spec: {type: pubsub.in-memory, version: v1}
        """,
    "lock.yaml": """\
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: lockstore}
        spec: {type: lock.in-memory, version: v1}
        """,
    "subscription.yaml": """\
        apiVersion: dapr.io/v2alpha1
        kind: Subscription
        metadata: {name: orders}
        spec: {pubsubname: pubsub, topic: orders, routes: {default: /orders}}
        """,
}

USE_IN_PROCESS = """\
import asyncio, sys
import mechakit
from mechakit.core.registry import default_registry

assert len(default_registry().specs()) > 10


async def use(folder):
    async with mechakit.open(folder, app_id="light") as rt:
        store = rt.state("statestore")
        await store.set("k", {"n": 1})
        assert (await store.get("k")).value == {"n": 1}
        await rt.pubsub("pubsub").publish("orders", {"id": 1})
        assert await rt.lock("lockstore").try_lock("r", "me", expiry_seconds=5)


asyncio.run(use(sys.argv[1]))
print("MECHAKIT", mechakit.__file__)
print("LOADED", sorted({m.partition(".")[0] for m in sys.modules} & set(sys.argv[2].split(","))))
"""

BLOCKER = """\
import sys

BLOCKED = set(sys.argv.pop(1).split(","))


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Block())
"""


def write_components(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in COMPONENTS.items():
        body = textwrap.dedent(text).replace("{folder}", folder.as_posix())
        (folder / name).write_text(body, encoding="utf-8")
    return folder


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**env, **extra}


# --- this environment, with the sidecar packages blocked --------------------------------


def blocked(tmp_path: Path, modules: Sequence[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``mechakit *argv`` in a subprocess of this environment that cannot import ``modules``."""
    script = BLOCKER + "from mechakit.runtime.cli import main\nraise SystemExit(main())\n"
    return subprocess.run(
        [sys.executable, "-c", script, ",".join(modules), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=clean_env(MECHAKIT_HOME=str(tmp_path / "home")),
    )


def test_run_without_the_sidecar_extra_says_what_to_install(tmp_path: Path) -> None:
    result = blocked(tmp_path, SIDECAR, "run", "--app-id", "x")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {HINT} (not installed: ")
    assert "grpcio" in lines[0]


def test_run_names_only_the_missing_sidecar_packages(tmp_path: Path) -> None:
    result = blocked(tmp_path, ["uvicorn"], "run", "--app-id", "x")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {HINT} (not installed: uvicorn)"


def test_conformance_without_pytest_says_what_to_install(tmp_path: Path) -> None:
    file = write_components(tmp_path / "components") / "lock.yaml"
    result = blocked(tmp_path, ["pytest", "pytest_asyncio"], "conformance", str(file))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: mechakit conformance needs the conformance extra: "
        "pip install 'mechakit[conformance]' (not installed: pytest, pytest-asyncio)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["components", "list"],
        ["components", "show", "state.sqlite"],
        ["components", "show", "bindings.http", "--json"],
        ["validate", "{components}"],
        ["init"],
    ],
)
def test_commands_work_without_the_sidecar_packages(tmp_path: Path, argv: list[str]) -> None:
    folder = write_components(tmp_path / "components")
    result = blocked(tmp_path, SIDECAR, *(a.replace("{components}", str(folder)) for a in argv))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_listing_the_components_imports_neither_pydantic_nor_a_driver(tmp_path: Path) -> None:
    """``mechakit components list`` is a quick look: the registry's entries only."""
    result = blocked(tmp_path, ["pydantic", *SIDECAR], "components", "list")
    assert result.returncode == 0, result.stderr
    assert "state.redis" in result.stdout and "Traceback" not in result.stderr


def test_the_in_process_runtime_imports_no_sidecar_package(tmp_path: Path) -> None:
    folder = write_components(tmp_path / "components")
    names = ",".join(SIDECAR)  # blocked, then reported if imported all the same
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER + USE_IN_PROCESS, names, str(folder), names],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("LOADED []")


# --- a fresh virtualenv with only the core dependencies ---------------------------------


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A virtualenv (no system site-packages) with mechakit's wheel and its declared
    dependencies only; returns its ``bin`` folder and the wheel."""
    base = tmp_path_factory.mktemp("light-core")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(base / "wheels"), source)
    (wheel,) = (base / "wheels").glob("mechakit-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one, from the index pip is configured with;
    # the dependencies come from the wheel's metadata, so this checks pyproject's list too.
    pip("--python", python, "install", wheel)
    return venv / "bin", wheel


def pip(*args: str | Path) -> None:
    """This environment's pip, quiet, from the package index it is configured with."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    result = subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def in_venv(bin_dir: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=clean_env(MECHAKIT_HOME=str(cwd / "home")),
    )


def distributions(bin_dir: Path, cwd: Path) -> set[str]:
    listing = in_venv(
        bin_dir,
        cwd,
        "python",
        "-c",
        "import importlib.metadata as m, json\n"
        "print(json.dumps([d.metadata['Name'].lower() for d in m.distributions()]))",
    )
    assert listing.returncode == 0, listing.stderr
    return set(json.loads(listing.stdout))


def test_the_core_install_has_no_sidecar_package(
    light_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, _ = light_venv
    installed = distributions(bin_dir, tmp_path)
    assert {"mechakit", "pluggy", "pydantic", "pyyaml"} <= installed
    assert not installed & SIDECAR_DISTRIBUTIONS
    assert "pytest" not in installed


def test_the_core_install_lists_validates_and_uses_components(
    light_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, _ = light_venv
    folder = write_components(tmp_path / "components")
    for argv in (
        ["--help"],
        ["components", "list"],
        ["components", "show", "state.sqlite"],
        ["validate", str(folder)],
        ["init"],
    ):
        result = in_venv(bin_dir, tmp_path, "mechakit", *argv)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
    listing = in_venv(bin_dir, tmp_path, "mechakit", "components", "list").stdout
    assert "state.sqlite" in listing and "pubsub.in-memory" in listing
    checked = in_venv(bin_dir, tmp_path, "mechakit", "validate", str(folder)).stdout
    assert "4 checked, 4 OK, 0 with errors" in checked
    used = in_venv(
        bin_dir, tmp_path, "python", "-c", USE_IN_PROCESS, str(folder), ",".join(SIDECAR)
    )
    assert used.returncode == 0, used.stderr
    assert f"MECHAKIT {bin_dir.parent}" in used.stdout  # the installed copy, not ./src
    assert used.stdout.strip().endswith("LOADED []")


def test_the_core_install_says_what_run_and_conformance_need(
    light_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, _ = light_venv
    run = in_venv(bin_dir, tmp_path, "mechakit", "run", "--app-id", "x")
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"error: {HINT} (not installed: starlette, uvicorn, grpcio, dapr, httpx)"
    )
    file = write_components(tmp_path / "components") / "lock.yaml"
    conformance = in_venv(bin_dir, tmp_path, "mechakit", "conformance", str(file))
    assert conformance.returncode == 1
    assert "pip install 'mechakit[conformance]'" in conformance.stderr
    assert "Traceback" not in conformance.stderr


def test_the_conformance_extra_runs_the_suite_without_the_sidecar(
    light_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    """What a third-party driver's CI installs: ``mechakit[conformance]``."""
    bin_dir, wheel = light_venv
    pip("--python", bin_dir / "python", "install", f"{wheel}[conformance]")
    assert not distributions(bin_dir, tmp_path) & SIDECAR_DISTRIBUTIONS
    file = write_components(tmp_path / "components") / "lock.yaml"
    result = in_venv(
        bin_dir, tmp_path, "mechakit", "conformance", str(file), "--only", "unlock", "--", "-q"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout

"""A separately installed package adds a component type with no change to mechakit.

The example package is really installed (pip, into a folder put on PYTHONPATH of a child
interpreter), then discovered, built from YAML, and run through the conformance suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "third-party-component"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    return env


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_the_driver_is_not_there_before_the_package_is_installed() -> None:
    result = run(dict(os.environ), "-m", "mechakit", "components", "list")
    assert result.returncode == 0, result.stderr
    assert "state.shelf" not in result.stdout


def test_installed_package_is_discovered_through_its_entry_point(installed: dict[str, str]) -> None:
    code = (
        "from mechakit.core.registry import default_registry as r; "
        "s = r().resolve('state.shelf'); print(s.plugin, s.target)"
    )
    result = run(installed, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["shelf", "mechakit_shelf.store:ShelfStateStore"]
    listing = run(installed, "-m", "mechakit", "components", "list")
    assert "state.shelf" in listing.stdout


def test_installed_driver_is_built_from_yaml_and_used(
    installed: dict[str, str], tmp_path: Path
) -> None:
    components = tmp_path / "components"
    components.mkdir()
    (components / "shelf.yaml").write_text(
        (EXAMPLE / "component.yaml").read_text().replace("{tmp}", str(tmp_path))
    )
    code = (
        "import asyncio, mechakit\n"
        "async def main():\n"
        f"    async with mechakit.open({str(components)!r}) as rt:\n"
        "        store = rt.state('shelf')\n"
        "        await store.set('k', {'n': 1})\n"
        "        item = await store.get('k')\n"
        "        print(item.value, item.etag)\n"
        "asyncio.run(main())\n"
    )
    result = run(installed, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'n': 1} 1"
    assert (tmp_path / "shelf.json").exists()


def test_installed_driver_passes_the_conformance_suite_with_one_command(
    installed: dict[str, str], tmp_path: Path
) -> None:
    result = run(
        installed, "-m", "mechakit", "conformance", str(EXAMPLE / "component.yaml"), cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert " passed" in output
    assert " failed" not in output
    assert "does not declare TRANSACTIONAL" in output

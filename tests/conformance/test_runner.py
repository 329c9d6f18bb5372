"""``mechakit conformance FILE`` as a function: checks the file, then runs pytest on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_component_file import component_file

from mechakit.conformance import all_suites
from mechakit.conformance.runner import TEST_CLASSES, conformance_command, run_conformance


def test_run_conformance_refuses_an_unknown_feature_before_running_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_conformance(component_file(tmp_path, None), features="ETAG,TLL") == 1
    assert "'TLL' is not a feature of state" in capsys.readouterr().err


def test_the_command_passes_the_expected_features_to_the_plugin(tmp_path: Path) -> None:
    path = component_file(tmp_path, None)
    command = conformance_command(path, "state", only="etag, ttl", features=[])
    assert command[command.index("--mechakit-features") + 1] == "none"
    assert command[command.index("-k") + 1] == "etag or ttl"
    assert "--mechakit-features" not in conformance_command(path, "state")


def test_every_category_runs_its_test_class() -> None:
    for category, name in TEST_CLASSES.items():
        assert getattr(all_suites, name).category == category

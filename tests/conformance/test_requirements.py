"""Feature gates name real features: a misspelled gate is an error, never a test skipped forever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mechakit.conformance import requires, without
from mechakit.conformance.requirements import UnknownFeatureError, check_gates
from mechakit.core.pubsub import PubSubFeature
from mechakit.core.state import StateFeature


def test_a_misspelled_feature_is_an_error_when_the_decorator_runs() -> None:
    with pytest.raises(UnknownFeatureError, match=r"'ETGA'.*did you mean 'ETAG'\?"):
        requires("ETGA")
    with pytest.raises(UnknownFeatureError, match=r"'TLL'.*did you mean 'TTL'\?"):
        without("TLL")


def test_a_gate_names_at_least_one_feature() -> None:
    with pytest.raises(UnknownFeatureError, match="at least one feature"):
        requires()


def test_gates_take_feature_enum_members_and_their_names() -> None:
    assert requires(StateFeature.ETAG, "TTL").mark.args == (StateFeature.ETAG, "TTL")
    assert without(StateFeature.TTL).mark.name == "without_features"


def test_a_feature_of_another_building_block_is_an_error_for_the_suite() -> None:
    marks = [requires("MESSAGE_TTL").mark]
    with pytest.raises(UnknownFeatureError, match=r"'MESSAGE_TTL' is not a feature of state"):
        check_gates("state", "test_x", marks)
    with pytest.raises(UnknownFeatureError, match=r"PubSubFeature\.MESSAGE_TTL"):
        check_gates("state", "test_x", [requires(PubSubFeature.MESSAGE_TTL).mark])
    check_gates("pubsub", "test_x", marks)


def test_lock_tests_cannot_be_gated_on_any_feature() -> None:
    with pytest.raises(UnknownFeatureError, match=r"not a feature of lock \(known: none\)"):
        check_gates("lock", "test_x", [requires(StateFeature.TTL).mark])


def test_a_suite_with_a_gate_of_another_building_block_fails_to_collect(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(
        "from mechakit.conformance import requires\n"
        "from mechakit.conformance.suites.state import StateSuite\n\n"
        "class TestMine(StateSuite):\n"
        "    @requires('BULK_PUBLISH')\n"
        "    async def test_mine(self, component): ...\n"
    )
    (tmp_path / "matrix.yaml").write_text(
        "targets:\n  - {name: state.in-memory, type: state.in-memory, features: [ETAG]}\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "mechakit.conformance.plugin",
            "-p",
            "no:cacheprovider",
            "--mechakit-targets",
            str(tmp_path / "matrix.yaml"),
            "-o",
            "asyncio_mode=auto",
            str(tmp_path / "test_suite.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "TestMine::test_mine: requires('BULK_PUBLISH')" in result.stdout
    assert "'BULK_PUBLISH' is not a feature of state" in result.stdout


def test_every_gate_of_the_shipped_suites_names_a_feature_of_its_building_block() -> None:
    from mechakit.conformance import all_suites

    for suite in vars(all_suites).values():
        category = getattr(suite, "category", None)
        if not isinstance(suite, type) or category is None:
            continue
        for name in dir(suite):
            marks = getattr(getattr(suite, name), "pytestmark", [])
            check_gates(category, f"{suite.__name__}.{name}", marks)

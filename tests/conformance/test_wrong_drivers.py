"""``mechakit conformance`` fails drivers whose declared features are not what they do.

The stores of ``wrong_state_stores`` are installed for a child interpreter as a third-party
package would be (a dist-info with the ``mechakit.components`` entry point), and the one
command a third-party author runs is run on each; the run must fail, and only the tests of
the misstated feature, each failure naming it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAILURE_HEADER = re.compile(r"^_+ TestState\.(\w+)\[[^\]]+\] _+$", re.M)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "wrong_state_stores.py", site)
    info = site / "mechakit_wrong_state_stores-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mechakit-wrong-state-stores\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[mechakit.components]\nwrong = wrong_state_stores\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def conformance(
    env: dict[str, str], tmp_path: Path, type_: str, features: str | None, *args: str
) -> tuple[int, str, set[str]]:
    """Run ``mechakit conformance`` on a component file of ``type_``: the exit code, the
    output, and the names of the failed tests."""
    annotation = (
        f"  annotations:\n    conformance.mechakit.io/features: {features!r}\n"
        if features is not None
        else ""
    )
    file = tmp_path / "component.yaml"
    file.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata:\n  name: wrong\n{annotation}"
        f"spec:\n  type: {type_}\n  version: v1\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mechakit", "conformance", str(file), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    output = result.stdout + result.stderr
    return result.returncode, output, set(FAILURE_HEADER.findall(output))


def test_a_store_declaring_etag_but_ignoring_etags_fails_the_etag_tests(
    installed: dict[str, str], tmp_path: Path
) -> None:
    code, output, failed = conformance(installed, tmp_path, "state.lying-etag", "ETAG")
    assert code == 1, output
    assert "test_stale_etag_is_a_mismatch_and_nothing_changes" in failed, output
    assert all("etag" in name for name in failed), failed
    note = "feature ETAG: state.lying-etag is expected to support ETAG"
    headers = list(FAILURE_HEADER.finditer(output))
    summary = output.find("short test summary info")
    ends = [h.start() for h in headers[1:]] + [summary if summary > 0 else len(output)]
    for header, end in zip(headers, ends, strict=True):  # each failure's report names it
        assert note in output[header.end() : end], header.group(1)


def test_a_store_applying_ttls_without_declaring_ttl_fails_the_absence_test(
    installed: dict[str, str], tmp_path: Path
) -> None:
    code, output, failed = conformance(installed, tmp_path, "state.hidden-ttl", "")
    assert code == 1, output
    assert failed == {"test_without_ttl_an_item_outlives_its_ttl"}, output
    assert "feature TTL: state.hidden-ttl does not declare TTL" in output
    assert "although the store does not declare TTL" in output


def test_a_store_checking_etags_without_declaring_etag_fails_the_absence_test(
    installed: dict[str, str], tmp_path: Path
) -> None:
    code, output, failed = conformance(installed, tmp_path, "state.hidden-etag", "")
    assert code == 1, output
    assert failed == {"test_without_etag_a_stale_etag_is_ignored_or_refused"}, output
    assert "feature ETAG: state.hidden-etag does not declare ETAG" in output


def test_a_declaration_the_author_does_not_expect_fails_the_features_test(
    installed: dict[str, str], tmp_path: Path
) -> None:
    code, output, failed = conformance(
        installed, tmp_path, "state.lying-etag", None, "--features", "none"
    )
    assert code == 1, output
    assert failed == {"test_features_are_exactly_the_expected_ones"}, output
    assert "feature ETAG: state.lying-etag declares ETAG, not expected" in output


def test_without_stated_features_the_declaration_is_not_compared_with_itself(
    installed: dict[str, str], tmp_path: Path
) -> None:
    code, output, failed = conformance(installed, tmp_path, "state.lying-etag", None)
    assert code == 1, output
    assert "test_features_are_exactly_the_expected_ones" not in failed
    assert "the expected features are not stated" in output
    assert "test_stale_etag_is_a_mismatch_and_nothing_changes" in failed, output
    assert "feature ETAG: state.lying-etag declares ETAG and this test checks" in output

"""The ``mechakit`` command: validate, components list/show, conformance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mechakit.runtime.cli import main

DATA = Path(__file__).parent / "data"
SDKS = ("redis", "psycopg", "boto3", "hvac", "httpx")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --- validate ---------------------------------------------------------------------------


def test_validate_passes_a_good_folder_without_reading_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "validate", str(DATA / "good"))
    assert code == 0, out
    assert "OK     Component 'statestore' (state.sqlite/v1)" in out
    assert "OK     Component 'files' (bindings.localstorage/v1)" in out
    assert "OK     Subscription 'orders'" in out
    assert "5 checked, 5 OK, 0 with errors" in out
    assert "README" not in out


def test_validate_reports_every_problem_of_a_bad_folder_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "validate", str(DATA / "bad"))
    assert code == 1
    assert "broken.yaml:7: invalid YAML" in out
    assert "OK     Component 'lockstore' (lock.in-memory/v1)" in out
    typo = out.split("Component 'cache'")[1]
    assert "typo.yaml:1" in typo and "did you mean 'state.sqlite'" in typo
    settings = out.split("Component 'statestore'")[1]
    assert "settings.yaml:1" in settings
    assert "error: metadata 'connectionString' is required" in settings
    assert "error: metadata 'timeout': not a duration: 'soon'" in settings
    assert "warning: unknown metadata 'tableNam' is ignored; did you mean 'tableName'?" in settings
    assert "uses secretKeyRef, so the component needs auth.secretStore" in out
    assert "spec.pubsubname: no pub/sub component named 'pubsub'" in out
    assert "6 checked, 1 OK, 5 with errors" in out


def test_validate_reports_duplicate_names_across_folders(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "validate", str(DATA / "good"), str(DATA / "good" / "statestore.yaml"))
    assert code == 1
    assert "Component 'statestore': metadata.name: Component 'statestore' is defined twice" in out


def test_validate_warns_about_an_unset_env_ref_instead_of_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MECHAKIT_TEST_UNSET", raising=False)
    (tmp_path / "c.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\n"
        "spec:\n  type: state.sqlite\n  metadata:\n"
        "    - name: connectionString\n      envRef: MECHAKIT_TEST_UNSET\n"
    )
    code, out = run(capsys, "validate", str(tmp_path))
    assert code == 0, out
    assert "WARN   Component 's'" in out
    assert "environment variable 'MECHAKIT_TEST_UNSET' is not set here" in out


def test_validate_of_a_missing_path_or_empty_folder_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "validate", str(tmp_path / "nope"))
    assert code == 1 and "no such file or folder" in out
    code, out = run(capsys, "validate", str(tmp_path))
    assert code == 1 and "no resources found" in out


# --- components ---------------------------------------------------------------------------


def test_components_list_imports_no_backend_sdk() -> None:
    code = (
        "import sys\n"
        "from mechakit.runtime.cli import main\n"
        "assert main(['components', 'list']) == 0\n"
        f"print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in {SDKS!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "state.sqlite" in result.stdout
    assert result.stdout.strip().endswith("LOADED []")


def test_components_list_shows_type_version_status_installed_and_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "components", "list", "--type", "state")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == ["TYPE", "VERSION", "STATUS", "INSTALLED", "DESCRIPTION"]
    assert all(row.startswith("state.") for row in rows)
    sqlite = next(row for row in rows if row.startswith("state.sqlite "))
    assert sqlite.split()[1:4] == ["v1", "stable", "yes"]
    assert "SQLite" in sqlite


def test_components_list_of_an_unknown_category_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "components", "list", "--type", "storage")
    assert code == 1 and "categories: state, pubsub" in out


def test_components_show_prints_metadata_fields_and_features(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "components", "show", "state.sqlite")
    assert code == 0
    assert "features: ETAG" in out
    row = next(line for line in out.splitlines() if line.startswith("connectionString"))
    assert row.split()[1:3] == ["string", "yes"]
    timeout = next(line for line in out.splitlines() if line.startswith("timeout "))
    assert "duration" in timeout and "20s" in timeout


def test_components_show_json_is_the_metadata_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "components", "show", "state.sqlite", "--json")
    assert code == 0
    schema = json.loads(out)
    assert "connectionString" in schema["properties"]
    assert "connectionString" in schema["required"]
    assert "ETAG" in schema["x-features"]


def test_components_show_marks_sensitive_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "components", "show", "state.redis")
    assert code == 0
    password = next(line for line in out.splitlines() if line.startswith("redisPassword"))
    assert "sensitive" in password


def test_components_show_of_an_unknown_type_suggests_near_matches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "components", "show", "state.sqlit")
    assert code == 1 and "did you mean 'state.sqlite'" in out


# --- conformance and argument handling -----------------------------------------------------


def test_conformance_runs_the_suite_of_the_component_type(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "lock.yaml"
    file.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: locks}\n"
        "spec: {type: lock.in-memory}\n"
    )
    code = main(["conformance", str(file), "--only", "unlock", "--", "-q"])
    out = capfd.readouterr().out
    assert code == 0, out
    assert " passed" in out and "failed" not in out
    assert "deselected" in out


def test_conformance_passes_pytest_exit_code_through(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "lock.yaml"
    file.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: locks}\n"
        "spec: {type: lock.in-memory}\n"
    )
    assert main(["conformance", str(file), "--", "-k", "no_test_has_this_name"]) == 5
    capfd.readouterr()


def test_conformance_of_a_file_without_components_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "empty.yaml"
    file.write_text("")
    code, out = run(capsys, "conformance", str(file))
    assert code == 1 and "no 'kind: Component' document found" in out


def test_arguments_after_double_dash_are_only_for_conformance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["components", "list", "--", "-x"])
    assert info.value.code == 2
    assert "only accepted by 'mechakit conformance'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["validate"],
        ["components"],
        ["components", "list"],
        ["components", "show"],
        ["conformance"],
        ["run"],
        ["init"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    assert "usage: mechakit" in capsys.readouterr().out

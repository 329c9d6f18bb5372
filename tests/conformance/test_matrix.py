"""A matrix file is checked on load: a typo is an error naming it, the file and what is known."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from mechakit.conformance.options import SUITE_OPTIONS, UnknownOptionError
from mechakit.conformance.plugin import option
from mechakit.conformance.targets import Target, load_matrix
from mechakit.core.errors import ManifestError

MATRIX = Path(__file__).resolve().parent / "matrix"
ROW = "  - name: state.in-memory\n    type: state.in-memory\n    features: [ETAG]\n"


def matrix(tmp_path: Path, extra: str = "", row: str = ROW) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text("targets:\n" + row + extra)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        load_matrix(path)
    return str(caught.value)


def test_an_unknown_option_names_the_option_the_file_and_the_known_options(
    tmp_path: Path,
) -> None:
    path = matrix(tmp_path, "    options:\n      bad_etga: x\n")
    message = load_error(path)
    assert str(path) in message
    assert "target 'state.in-memory'" in message
    assert "unknown option 'bad_etga'" in message
    assert "did you mean 'bad_etag'?" in message
    known = re.search(r"known options: ([^)]*)\)", message)
    assert known is not None
    assert set(known.group(1).split(", ")) == {*SUITE_OPTIONS["state"], "files", "env"}


def test_an_option_of_another_suite_is_unknown(tmp_path: Path) -> None:
    message = load_error(matrix(tmp_path, "    options:\n      receive_timeout: 5\n"))
    assert "unknown option 'receive_timeout' for a state target" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"big"', "option 'large_value_bytes' must be an integer, got 'big'"),
        ("true", "option 'large_value_bytes' must be an integer, got True"),
    ],
)
def test_an_option_of_the_wrong_type_is_an_error(tmp_path: Path, value: str, expected: str) -> None:
    message = load_error(matrix(tmp_path, f"    options:\n      large_value_bytes: {value}\n"))
    assert expected in message


def test_an_option_outside_its_choices_is_an_error(tmp_path: Path) -> None:
    row = "  - name: bindings.x\n    type: bindings.localstorage\n    features: []\n"
    message = load_error(matrix(tmp_path, "    options:\n      direction: sideways\n", row))
    assert "option 'direction' must be one of input, output, both, got 'sideways'" in message


def test_an_unknown_target_field_is_an_error(tmp_path: Path) -> None:
    message = load_error(matrix(tmp_path, "    option:\n      bad_etag: x\n"))
    assert "unknown field 'option'" in message
    assert "options" in message


def test_a_target_states_its_features(tmp_path: Path) -> None:
    row = "  - name: state.in-memory\n    type: state.in-memory\n"
    assert "needs 'features'" in load_error(matrix(tmp_path, row=row))


def test_an_unknown_feature_in_the_matrix_is_an_error(tmp_path: Path) -> None:
    row = "  - name: state.in-memory\n    type: state.in-memory\n    features: [ETGA]\n"
    message = load_error(matrix(tmp_path, row=row))
    assert "'ETGA' is not a feature of state" in message
    assert "did you mean 'ETAG'?" in message


def test_a_type_without_a_suite_is_an_error(tmp_path: Path) -> None:
    row = "  - name: stat.redis\n    type: stat.redis\n    features: []\n"
    assert "no conformance suite for 'stat.redis'" in load_error(matrix(tmp_path, row=row))


def test_an_unknown_backend_is_an_error_not_a_skip(tmp_path: Path) -> None:
    message = load_error(matrix(tmp_path, "    backend: rediss\n"))
    assert "unknown backend 'rediss'" in message
    assert "redis" in message
    assert "package.module:factory" in message


def test_every_shipped_matrix_row_loads_with_declared_options() -> None:
    targets = load_matrix(MATRIX)
    assert {t.name for t in targets} >= {"state.sqlite", "state.redis", "pubsub.in-memory"}
    assert all(t.features is not None for t in targets)


def test_a_suite_reading_an_undeclared_option_is_an_error() -> None:
    target = Target(name="state.x", type="state.x", options={"bad_etag": "x"})
    assert option(target, "bad_etag") == "x"
    assert option(target, "concurrent_writers") == 10
    with pytest.raises(UnknownOptionError, match="unknown option 'bad_etga'"):
        option(target, "bad_etga")


@pytest.mark.parametrize("category", sorted(SUITE_OPTIONS))
def test_the_declared_options_are_the_ones_the_suite_documents(category: str) -> None:
    module = importlib.import_module(f"mechakit.conformance.suites.{category}")
    doc = module.__doc__ or ""
    listed = set(re.findall(r"^- ``(\w+)``", doc, re.M))
    mentioned = set(re.findall(r"``(\w+)``", doc))
    assert listed <= set(SUITE_OPTIONS[category])
    assert set(SUITE_OPTIONS[category]) <= mentioned


def test_a_matrix_names_a_backend_by_module_and_factory(tmp_path: Path) -> None:
    spec = "test_backends:FixedBackend"
    [target] = load_matrix(matrix(tmp_path, f"    backend: '{spec}'\n"))
    assert target.backend == spec


def test_a_factory_that_names_nothing_is_an_error(tmp_path: Path) -> None:
    message = load_error(matrix(tmp_path, "    backend: 'test_backends:nothing'\n"))
    assert "cannot load test_backends:nothing" in message

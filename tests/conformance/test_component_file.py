"""Third-party mode: the author states the expected features, in the file or on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechakit.conformance.component_file import target_from_component_file
from mechakit.core.errors import ManifestError


def component_file(tmp_path: Path, annotation: str | None) -> Path:
    annotations = (
        f"  annotations:\n    conformance.mechakit.io/features: {annotation}\n"
        if annotation is not None
        else ""
    )
    path = tmp_path / "component.yaml"
    path.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata:\n  name: store\n{annotations}"
        "spec:\n  type: state.in-memory\n  version: v1\n"
    )
    return path


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ('"ETAG, TTL"', frozenset({"ETAG", "TTL"})),
        ('"etag"', frozenset({"ETAG"})),
        ('""', frozenset()),
        ("none", frozenset()),
        (None, None),
    ],
)
def test_the_annotation_states_the_expected_features(
    tmp_path: Path, annotation: str | None, expected: frozenset[str] | None
) -> None:
    assert target_from_component_file(component_file(tmp_path, annotation)).features == expected


def test_features_given_on_the_command_line_win_over_the_file(tmp_path: Path) -> None:
    path = component_file(tmp_path, '"ETAG"')
    stated = target_from_component_file(path, "TTL,TRANSACTIONAL").features
    assert stated == frozenset({"TTL", "TRANSACTIONAL"})
    assert target_from_component_file(path, []).features == frozenset()


def test_an_unknown_expected_feature_names_it_and_the_file(tmp_path: Path) -> None:
    path = component_file(tmp_path, '"ETGA"')
    with pytest.raises(ManifestError) as caught:
        target_from_component_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert "'ETGA' is not a feature of state" in message
    assert "did you mean 'ETAG'?" in message


def test_the_annotation_must_be_text(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="must be a string"):
        target_from_component_file(component_file(tmp_path, "[ETAG]"))

"""Hostile manifests: YAML bombs, duplicate keys and deep nesting are refused before expansion.

Aliases are refused outright (Kubernetes manifests never need them), so a billion-laughs file
fails at its first alias instead of expanding. Duplicate keys would otherwise silently keep
the last value. Each error names the file and line.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mechakit.core.errors import ManifestError
from mechakit.runtime.manifest import load_manifests

DATA = Path(__file__).parent / "data"
MEMORY_LIMIT = 512 * 1024 * 1024
"""Far below what expanding the bomb takes (over 1 GB), far above what refusing it takes."""

HEADER = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: lol
spec:
  type: state.in-memory
  version: v1
"""


def billion_laughs(path: Path) -> Path:
    """Eight levels of nine aliases each: 9^8 (43 million) strings once expanded."""
    levels = "abcdefgh"
    lines = ["  bomb:", '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, level in itertools.pairwise(levels):
        lines.append(f"    {level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def limited_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def mechakit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m mechakit`` in a process that dies if it tries to expand a bomb."""
    return subprocess.run(
        [sys.executable, "-m", "mechakit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited_memory,
        check=False,
    )


# --- aliases ----------------------------------------------------------------------------


@contextlib.contextmanager
def at_most_512_mib_more() -> Iterator[None]:
    """Caps this process's address space near its current size, so an expansion fails fast."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = re.search(r"^VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert size is not None
    in_use = int(size[1]) * 1024
    cap = in_use + MEMORY_LIMIT
    resource.setrlimit(
        resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
    )
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_billion_laughs_file_is_refused_at_its_first_alias(tmp_path: Path) -> None:
    bomb = billion_laughs(tmp_path / "bomb.yaml")
    with at_most_512_mib_more(), pytest.raises(ManifestError) as caught:
        load_manifests(bomb)
    assert str(caught.value) == (
        f"{bomb}:10: spec.bomb.b[0]: YAML alias '*a' (column 12): aliases are not allowed "
        "in manifests; write the value out in full"
    )


def test_the_cli_refuses_a_billion_laughs_file_within_a_small_memory_limit(
    tmp_path: Path,
) -> None:
    good = mechakit_cli("validate", str(DATA / "good"))
    assert good.returncode == 0, "the limit leaves room for a normal run: " + good.stderr
    bomb = billion_laughs(tmp_path / "bomb.yaml")
    refused = mechakit_cli("validate", str(bomb))
    assert refused.returncode == 1, refused.stderr
    assert f"{bomb}:10: spec.bomb.b[0]: YAML alias '*a'" in refused.stdout
    assert "1 checked, 0 OK, 1 with errors" in refused.stdout
    assert "Traceback" not in refused.stderr and "MemoryError" not in refused.stderr


@pytest.mark.parametrize(
    ("yaml_text", "line", "where"),
    [
        ("  metadata:\n    - &item {name: a, value: b}\n    - *item\n", 10, "spec.metadata[1]"),
        ("  base: &base {x: '1'}\n  other:\n    <<: *base\n", 10, "spec.other.<<"),
        ("  k: &k name\n  *k : value\n", 9, "spec"),
    ],
    ids=["value", "merge-key", "key"],
)
def test_every_alias_is_refused_with_its_line(
    tmp_path: Path, yaml_text: str, line: int, where: str
) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text(HEADER + yaml_text)
    with pytest.raises(ManifestError, match="aliases are not allowed") as caught:
        load_manifests(path)
    assert str(caught.value).startswith(f"{path}:{line}: {where}: YAML alias '*")


def test_an_anchor_without_an_alias_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "anchor.yaml"
    path.write_text(HEADER + "  metadata:\n    - &one {name: a, value: b}\n")
    (item,) = load_manifests(path).components[0].metadata
    assert (item.name, item.value) == ("a", "b")


# --- duplicate keys ---------------------------------------------------------------------


def test_a_duplicate_top_level_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dup.yaml",
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata:
          name: first
        spec:
          type: state.in-memory
          version: v1
        metadata:
          name: second
        """,
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert str(caught.value) == (
        f"{path}:8: metadata: duplicate key 'metadata' on lines 3 and 8; keep one "
        "(YAML would silently use the last)"
    )


def test_a_duplicate_nested_key_names_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dup.yaml",
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata:
          name: statestore
        spec:
          type: state.in-memory
          version: v1
          type: state.redis
        """,
    )
    with pytest.raises(ManifestError, match=r"spec\.type: duplicate key 'type' on lines 6 and 8"):
        load_manifests(path)


def test_a_duplicate_key_in_a_metadata_entry_names_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dup.yaml",
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata:
          name: statestore
        spec:
          type: state.in-memory
          version: v1
          metadata:
            - name: a
              value: "1"
            - name: b
              value: "2"
              value: "3"
        """,
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert str(caught.value).startswith(
        f"{path}:13: spec.metadata[1].value: duplicate key 'value' on lines 12 and 13"
    )
    assert "'2'" not in str(caught.value) and "'3'" not in str(caught.value), "no values echoed"


def test_a_duplicate_key_in_a_flow_mapping_and_a_later_document(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dup.yaml",
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: one}
        spec: {type: state.in-memory, version: v1}
        ---
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: two, name: three}
        spec: {type: state.in-memory, version: v1}
        """,
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert str(caught.value).startswith(
        f"{path}:8: metadata.name: duplicate key 'name' twice on line 8"
    )


def test_the_cli_reports_a_duplicate_key_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(HEADER + "  version: v2\n")
    result = mechakit_cli("validate", str(path))
    assert result.returncode == 1
    assert f"{path}:8: spec.version: duplicate key 'version' on lines 7 and 8" in result.stdout


def test_the_same_key_in_different_mappings_is_fine() -> None:
    manifests = load_manifests(DATA / "good")
    assert {c.name for c in manifests.components} >= {"statestore", "files"}


# --- nesting ----------------------------------------------------------------------------


def test_deep_nesting_is_refused_instead_of_crashing(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(HEADER + "  deep: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests(path)
    assert str(caught.value).startswith(f"{path}:8: nested deeper than 64 levels (column ")

"""Discovery through pluggy entry points, lazily."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest

from mechakit.core.errors import ComponentNotFoundError, MissingDependencyError
from mechakit.core.registry import ComponentSpec, Registry, default_registry, hookimpl


def test_builtin_drivers_are_found_through_the_entry_point() -> None:
    types_found = {spec.type for spec in default_registry().specs()}
    assert {"state.sqlite", "state.in-memory", "pubsub.in-memory", "bindings.cron"} <= types_found
    spec = default_registry().resolve("state.sqlite")
    assert spec.plugin == "mechakit"


def test_type_lookup_is_case_insensitive_and_defaults_to_v1() -> None:
    assert default_registry().resolve("State.SQLite", "").type == "state.sqlite"


def test_unknown_type_names_the_near_matches() -> None:
    with pytest.raises(ComponentNotFoundError) as info:
        default_registry().resolve("state.sqlit")
    assert "did you mean 'state.sqlite'" in str(info.value)
    assert info.value.field == "spec.type"


def test_unknown_category_lists_the_valid_ones() -> None:
    with pytest.raises(ComponentNotFoundError, match="must start with one of: state, pubsub"):
        default_registry().resolve("storage.sqlite")


def test_unknown_version_lists_installed_versions() -> None:
    with pytest.raises(ComponentNotFoundError, match=r"version 'v9'.*installed versions: v1"):
        default_registry().resolve("state.sqlite", "v9")


def _plugin_with(spec: ComponentSpec) -> types.ModuleType:
    module = types.ModuleType("fake_plugin")

    @hookimpl
    def mechakit_components() -> list[ComponentSpec]:
        return [spec]

    module.mechakit_components = mechakit_components  # type: ignore[attr-defined]
    return module


def test_missing_sdk_error_shows_the_specs_own_install_hint_exactly() -> None:
    spec = ComponentSpec(
        "state.nosuch",
        "mechakit.components.state.in_memory:InMemoryStateStore",
        install_hint="pip install 'my-package[sdk]'",
        requires=("nosuch_sdk_module",),
    )
    registry = Registry([_plugin_with(spec)], load_entry_points=False)
    assert not registry.resolve("state.nosuch").installed()
    with pytest.raises(MissingDependencyError) as info:
        registry.create("state.nosuch")
    assert str(info.value) == (
        "state.nosuch: needs the 'nosuch_sdk_module' package, which is not installed: "
        "pip install 'my-package[sdk]'"
    )


def test_every_builtin_driver_with_an_sdk_names_a_real_mechakit_extra() -> None:
    extras = set(importlib.metadata.metadata("mechakit").get_all("Provides-Extra") or [])
    builtins = [s for s in default_registry().specs() if s.plugin == "mechakit" and s.requires]
    assert builtins
    for spec in builtins:
        extra = spec.install_hint.removeprefix("pip install 'mechakit[").removesuffix("]'")
        assert spec.install_hint == f"pip install 'mechakit[{extra}]'", spec.type
        assert extra in extras, spec.type


def test_a_plugin_registered_at_run_time_is_resolvable_with_aliases() -> None:
    spec = ComponentSpec(
        "state.alias-test",
        "mechakit.components.state.in_memory:InMemoryStateStore",
        aliases=("state.aliased",),
    )
    registry = Registry(load_entry_points=False)
    registry.register(_plugin_with(spec), name="aliases")
    assert registry.resolve("state.aliased").type == "state.alias-test"
    assert [s.type for s in registry.specs()] == ["state.alias-test"]


def test_listing_components_imports_no_driver_or_sdk() -> None:
    code = (
        "import sys; from mechakit.core.registry import default_registry; "
        "specs = default_registry().specs(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'psycopg', 'boto3', 'hvac', 'httpx') or m.startswith('mechakit.components.state')]; "
        "print(len(specs), bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, bad = out.stdout.strip().split(" ", 1)
    assert int(count) >= 10
    assert bad == "[]"


@dataclass(frozen=True)
class _SpecWithOwner(ComponentSpec):
    owner: str = ""


def test_a_spec_subclass_keeps_its_class_and_fields_when_tagged_with_its_plugin() -> None:
    spec = _SpecWithOwner(
        "state.owned", "mechakit.components.state.in_memory:InMemoryStateStore", owner="team-a"
    )
    registry = Registry(load_entry_points=False)
    registry.register(_plugin_with(spec), name="owned")
    found = registry.resolve("state.owned")
    assert isinstance(found, _SpecWithOwner)
    assert (found.owner, found.plugin) == ("team-a", "owned")

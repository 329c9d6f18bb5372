"""A type and version announced twice is refused when the registry is built, naming both.

The distributions here are real: a ``.dist-info`` folder with an ``entry_points.txt`` on
``sys.path``, found by ``importlib.metadata`` and loaded by pluggy like any installed package.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mechakit.core.errors import ConfigurationError
from mechakit.core.registry import ComponentSpec, Registry, hookimpl

DRIVER = "mechakit.components.state.in_memory:InMemoryStateStore"

Install = Callable[..., None]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """``install("pkg-a", "1.0", ["state.foo"], ["state.bar"])``: one plug-in module (one entry
    point, named ``pkg-a-0``, ``pkg-a-1`` unless given) per list of types, in a distribution
    put on ``sys.path``."""
    modules: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def install_distribution(
        name: str, version: str, *plugins: list[str], entry_point: str | None = None
    ) -> None:
        entry_points = ["[mechakit.components]"]
        for number, type_names in enumerate(plugins):
            module = f"{name.replace('-', '_')}_plugin_{number}_{uuid.uuid4().hex}"
            specs = ", ".join(f"ComponentSpec({t!r}, {DRIVER!r})" for t in type_names)
            (tmp_path / f"{module}.py").write_text(
                "from mechakit.core.registry import ComponentSpec, hookimpl\n\n"
                "@hookimpl\n"
                f"def mechakit_components():\n    return [{specs}]\n"
            )
            entry_points.append(f"{entry_point or f'{name}-{number}'} = {module}")
            modules.append(module)
        dist_info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        (dist_info / "entry_points.txt").write_text("\n".join(entry_points) + "\n")

    yield install_distribution
    for module in modules:
        sys.modules.pop(module, None)


def _plugin(name: str, *specs: ComponentSpec) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def mechakit_components() -> list[ComponentSpec]:
        return list(specs)

    module.mechakit_components = mechakit_components  # type: ignore[attr-defined]
    return module


def test_two_distributions_registering_one_type_is_an_error_naming_both(
    install: Install,
) -> None:
    install("pkg-a", "1.0", ["state.foo"])
    install("pkg-b", "2.0", ["state.foo"])
    with pytest.raises(ConfigurationError) as info:
        Registry()
    both = ("'pkg-a 1.0' and 'pkg-b 2.0'", "'pkg-b 2.0' and 'pkg-a 1.0'")
    assert str(info.value) in {
        f"state.foo: component type 'state.foo' v1 is registered by both {names}; "
        "uninstall one of them"
        for names in both
    }
    assert info.value.component == "state.foo"


def test_a_distribution_announcing_a_builtin_type_again_is_refused_naming_mechakit(
    install: Install,
) -> None:
    install("pkg-c", "3.1", ["state.sqlite"])
    with pytest.raises(ConfigurationError) as info:
        Registry()
    mechakit = f"'mechakit {importlib.metadata.version('mechakit')}'"
    assert "'state.sqlite' v1 is registered by both" in str(info.value)
    assert mechakit in str(info.value)
    assert "'pkg-c 3.1'" in str(info.value)


def test_one_distribution_announcing_a_type_from_two_entry_points_is_an_error(
    install: Install,
) -> None:
    install("pkg-d", "0.2", ["state.foo"], ["state.foo"])
    with pytest.raises(
        ConfigurationError, match="'state.foo' v1 is registered twice by 'pkg-d 0.2'"
    ):
        Registry()


def test_two_distributions_using_one_entry_point_name_is_an_error_not_a_silent_skip(
    install: Install,
) -> None:
    install("pkg-a", "1.0", ["state.foo"], entry_point="storage")
    install("pkg-b", "2.0", ["state.bar"], entry_point="storage")
    with pytest.raises(ConfigurationError) as info:
        Registry()
    assert "entry point 'storage' of group 'mechakit.components' is declared by both" in str(
        info.value
    )
    assert "'pkg-a 1.0'" in str(info.value) and "'pkg-b 2.0'" in str(info.value)


def test_a_distribution_seen_twice_on_the_path_is_loaded_from_the_first_copy_only(
    install: Install, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    install("pkg-e", "1.0", ["state.foo"], entry_point="pkg-e")
    copy = tmp_path_factory.mktemp("copy") / "pkg_e-1.0.dist-info"
    copy.mkdir()
    (copy / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg-e\nVersion: 1.0\n")
    (copy / "entry_points.txt").write_text("[mechakit.components]\npkg-e = pkg_e_not_imported\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(copy.parent)])
    assert Registry().resolve("state.foo").plugin == "pkg-e"


def test_one_plugin_announcing_a_type_twice_in_any_case_is_an_error() -> None:
    plugin = _plugin(
        "twice", ComponentSpec("state.foo", DRIVER), ComponentSpec("State.Foo", DRIVER)
    )
    with pytest.raises(ConfigurationError) as info:
        Registry([plugin], load_entry_points=False)
    assert str(info.value) == (
        "State.Foo: component type 'State.Foo' v1 is registered twice by plug-in 'twice'; "
        "each type and version must be announced once"
    )


def test_an_alias_taken_by_another_plugins_type_is_an_error_naming_the_alias() -> None:
    first = _plugin("first", ComponentSpec("bindings.postgres", DRIVER))
    second = _plugin(
        "second", ComponentSpec("bindings.postgresql", DRIVER, aliases=("bindings.postgres",))
    )
    with pytest.raises(ConfigurationError) as info:
        Registry([first, second], load_entry_points=False)
    assert str(info.value) == (
        "bindings.postgres: component type 'bindings.postgres' v1 "
        "(as an alias of 'bindings.postgresql') is registered by both plug-in 'first' and "
        "plug-in 'second'; register only one of them"
    )


def test_a_plugin_refused_at_run_time_is_not_kept() -> None:
    registry = Registry(
        [_plugin("first", ComponentSpec("state.foo", DRIVER))], load_entry_points=False
    )
    with pytest.raises(
        ConfigurationError, match="registered by both plug-in 'first' and plug-in 'late'"
    ):
        registry.register(_plugin("late", ComponentSpec("state.foo", DRIVER)), name="late")
    assert registry.resolve("state.foo").plugin == "first"
    registry.register(_plugin("late", ComponentSpec("state.bar", DRIVER)), name="late")
    assert [s.type for s in registry.specs()] == ["state.bar", "state.foo"]


def test_the_same_type_in_two_versions_from_two_plugins_is_not_a_conflict() -> None:
    registry = Registry(
        [
            _plugin("one", ComponentSpec("state.foo", DRIVER)),
            _plugin("two", ComponentSpec("state.foo", DRIVER, version="v2")),
        ],
        load_entry_points=False,
    )
    assert registry.resolve("state.foo", "v2").plugin == "two"
    assert registry.resolve("state.foo").plugin == "one"


def test_the_cli_says_it_in_one_line_not_a_traceback(
    install: Install, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mechakit.core import registry
    from mechakit.runtime.cli import main

    monkeypatch.setattr(registry, "_default", None)  # built anew, over these distributions
    install("pkg-a", "1.0", ["state.foo"])
    install("pkg-b", "2.0", ["state.foo"])
    assert main(["components", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: state.foo: component type 'state.foo' v1 is registered by both")
    assert "Traceback" not in err

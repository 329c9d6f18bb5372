"""The conformance pytest plugin: targets, backends, and a fresh component per test.

Enable it with ``-p mechakit.conformance.plugin`` (``mechakit conformance`` does), or
``pytest_plugins = ["mechakit.conformance.plugin"]`` in a conftest. Test classes from
``mechakit.conformance.suites`` are parametrised over every target of their category.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.core.component import Component, ComponentMetadata
from mechakit.core.registry import default_registry

from .backends import BackendInfo, BackendUnavailable, provision
from .options import declared_option
from .requirements import REQUIRES_MARK, WITHOUT_MARK, check_gates, gate_features
from .targets import Target, load_matrix

APP_ID = "conformance-app"
ComponentFactory = Callable[..., Awaitable[Any]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mechakit", "mechakit conformance")
    group.addoption(
        "--mechakit-targets",
        default=None,
        help="conformance matrix file (default: the 'mechakit_targets' ini value)",
    )
    group.addoption(
        "--mechakit-component",
        default=None,
        help="run the suites against the component in this Dapr Component YAML file",
    )
    group.addoption(
        "--mechakit-features",
        default=None,
        help="with --mechakit-component: the features the driver must declare, "
        "comma-separated ('' or 'none' for none); overrides the file's "
        "conformance.mechakit.io/features annotation",
    )
    group.addoption(
        "--mechakit-only",
        default=None,
        help="comma-separated target names (or type prefixes) to run, e.g. state.sqlite",
    )
    parser.addini("mechakit_targets", "conformance matrix file, relative to rootdir", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{REQUIRES_MARK}(*features): run only for targets expected to declare all these "
        "features (use mechakit.conformance.requires)",
    )
    config.addinivalue_line(
        "markers",
        f"{WITHOUT_MARK}(*features): run only for targets expected to declare none of these "
        "features (use mechakit.conformance.without)",
    )
    config.addinivalue_line("markers", "fault: kills or restarts a backend (slow)")


def _targets(config: pytest.Config) -> list[Target]:
    cached: list[Target] | None = getattr(config, "_mechakit_targets", None)
    if cached is not None:
        return cached
    component_file = config.getoption("--mechakit-component")
    targets: list[Target] = []
    if component_file:
        from .component_file import target_from_component_file

        features = config.getoption("--mechakit-features")
        targets = [target_from_component_file(Path(component_file), features)]
    else:
        matrix = config.getoption("--mechakit-targets") or config.getini("mechakit_targets")
        if matrix:
            path = Path(matrix)
            if not path.is_absolute():
                path = Path(config.rootpath) / path
            if path.exists():
                targets = load_matrix(path)
    only = config.getoption("--mechakit-only")
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        targets = [t for t in targets if any(t.name.startswith(w) for w in wanted)]
    config._mechakit_targets = targets  # type: ignore[attr-defined]
    return targets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    category = getattr(metafunc.cls, "category", None)
    if category is not None:
        check_gates(category, metafunc.definition.nodeid, metafunc.definition.iter_markers())
    if "conformance_target" not in metafunc.fixturenames:
        return
    targets = [t for t in _targets(metafunc.config) if t.category == category]
    metafunc.parametrize("conformance_target", targets, ids=[t.name for t in targets])


class _BackendCache:
    """Provisions each backend once per session and stops what it started at the end."""

    def __init__(self) -> None:
        self._infos: dict[str, BackendInfo | BackendUnavailable] = {}

    def get(self, name: str) -> BackendInfo:
        if name not in self._infos:
            try:
                self._infos[name] = provision(name)
            except BackendUnavailable as exc:
                self._infos[name] = exc
        found = self._infos[name]
        if isinstance(found, BackendUnavailable):
            pytest.skip(str(found))
        return found

    def close(self) -> None:
        for info in self._infos.values():
            if isinstance(info, BackendInfo):
                info.stop()


@pytest.fixture(scope="session")
def mechakit_backends() -> Iterator[_BackendCache]:
    cache = _BackendCache()
    yield cache
    cache.close()


@pytest.fixture
def conformance_backend(
    conformance_target: Target, mechakit_backends: _BackendCache
) -> BackendInfo | None:
    """The provisioned backend of the target, or None for embedded drivers."""
    if not conformance_target.backend:
        return None
    return mechakit_backends.get(conformance_target.backend)


@pytest.fixture
def conformance_context(
    conformance_target: Target,
    conformance_backend: BackendInfo | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """Placeholder values for this test; writes ``options.files`` and sets ``options.env``."""
    context = {"tmp": str(tmp_path)}
    if conformance_backend is not None:
        context.update({f"backend.{k}": v for k, v in conformance_backend.values.items()})
    files = conformance_target.options.get("files") or {}
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(conformance_target.render(str(content), context))
    for name, value in (conformance_target.options.get("env") or {}).items():
        monkeypatch.setenv(str(name), conformance_target.render(str(value), context))
    return context


@pytest.fixture
def expected_features(conformance_target: Target) -> frozenset[str]:
    """The features the target's driver must declare, as the matrix or the author states them.

    Never the driver's own declaration: a test comparing that with itself could not fail.
    When nobody stated them (a component file without the annotation) the test is skipped.
    """
    if conformance_target.features is None:
        pytest.skip(
            f"{conformance_target.name}: the expected features are not stated, so the "
            "declaration is not checked; add the annotation conformance.mechakit.io/features "
            '(e.g. "ETAG, TTL", or "" for none) to the component file, '
            "or pass --mechakit-features"
        )
    return conformance_target.features


def declared_features(component_type: str, version: str) -> frozenset[str]:
    """What the driver class declares, without initialising it."""
    cls = default_registry().resolve(component_type, version).load()
    features = getattr(cls(), "features", None)
    return frozenset(str(f) for f in (features() if callable(features) else ()))


def _gating_features(target: Target) -> frozenset[str]:
    """The features gates go by: the stated ones, or the declared ones when none are stated
    (so every claim is tested, and every undeclared feature checked for absence)."""
    if target.features is not None:
        return target.features
    return declared_features(target.type, target.version)


@pytest.fixture(autouse=True)
def _feature_gate(request: pytest.FixtureRequest) -> None:
    if "conformance_target" not in request.fixturenames:
        return
    target: Target = request.getfixturevalue("conformance_target")
    features = _gating_features(target)
    marks = list(request.node.iter_markers())
    missing = [f for f in gate_features(marks, REQUIRES_MARK) if f not in features]
    if missing:
        pytest.skip(f"{target.name} does not declare {', '.join(missing)}")
    present = [f for f in gate_features(marks, WITHOUT_MARK) if f in features]
    if present:
        pytest.skip(f"{target.name} declares {', '.join(present)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A failing gated test says which feature it checks, and what the failure means."""
    try:
        return (yield)
    except (Exception, pytest.fail.Exception) as exc:
        for note in _feature_notes(item):
            exc.add_note(note)
        raise


def _feature_notes(item: pytest.Item) -> list[str]:
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    target = funcargs.get("conformance_target")
    if not isinstance(target, Target):
        return []
    marks = list(item.iter_markers())
    notes = []
    claims = "is expected to support" if target.features is not None else "declares"
    for feature in gate_features(marks, REQUIRES_MARK):
        notes.append(
            f"feature {feature}: {target.name} {claims} {feature} and this test checks what "
            f"{feature} promises; implement it, or stop declaring {feature}"
        )
    for feature in gate_features(marks, WITHOUT_MARK):
        notes.append(
            f"feature {feature}: {target.name} does not declare {feature}, and this test "
            f"checks that {feature} is really absent; the driver behaves as if it implements "
            f"{feature}: declare {feature} (and pass its tests), or stop doing it"
        )
    features = getattr(funcargs.get("component"), "features", None)
    if "expected_features" in funcargs and callable(features):
        declared = {str(f) for f in features()}
        expected = set(funcargs["expected_features"])
        for feature in sorted(declared - expected):
            notes.append(f"feature {feature}: {target.name} declares {feature}, not expected")
        for feature in sorted(expected - declared):
            notes.append(f"feature {feature}: {target.name} is expected to declare {feature}")
    return notes


@pytest_asyncio.fixture
async def component_factory(
    conformance_target: Target, conformance_context: dict[str, str]
) -> AsyncIterator[ComponentFactory]:
    """Builds and initialises a fresh component of the target; closes every one at teardown.

    Keyword arguments override metadata values (after placeholders are filled).
    """
    made: list[Component[Any]] = []

    async def make(name: str = "conformance", **overrides: str) -> Any:
        properties = {
            k: conformance_target.render(v, conformance_context)
            for k, v in conformance_target.metadata.items()
        }
        properties.update(overrides)
        driver = default_registry().create(conformance_target.type, conformance_target.version)
        await driver.init(
            ComponentMetadata(
                name=name,
                type=conformance_target.type,
                version=conformance_target.version,
                properties=properties,
                app_id=APP_ID,
            )
        )
        made.append(driver)
        return driver

    yield make
    for driver in reversed(made):
        await driver.close()


@pytest_asyncio.fixture
async def component(component_factory: ComponentFactory) -> Any:
    """A fresh, initialised component of the target under test."""
    return await component_factory()


_DECLARED_DEFAULT: Any = object()


def option(target: Target, name: str, default: Any = _DECLARED_DEFAULT) -> Any:
    """A suite option of the target (``options:`` in the matrix), or ``default`` (by default
    the declared one). ``UnknownOptionError`` when the suite never declared ``name``."""
    declared = declared_option(target.category, name)
    fallback = declared.default if default is _DECLARED_DEFAULT else default
    return target.options.get(name, fallback)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")

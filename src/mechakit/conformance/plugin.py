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

from . import (  # noqa: F401 - importing registers each backend
    backends_aws,
    backends_http,
    backends_postgres,
    backends_redis,
    backends_vault,
)
from .backends import BackendInfo, BackendUnavailable, provision
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
        "--mechakit-only",
        default=None,
        help="comma-separated target names (or type prefixes) to run, e.g. state.sqlite",
    )
    parser.addini("mechakit_targets", "conformance matrix file, relative to rootdir", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_features(*names): run only for targets declaring all these features"
    )
    config.addinivalue_line(
        "markers", "without_features(*names): run only for targets declaring none of these features"
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

        targets = [target_from_component_file(Path(component_file))]
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
    if "conformance_target" not in metafunc.fixturenames:
        return
    category = getattr(metafunc.cls, "category", None)
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
    """The matrix's features for the target, or the driver's declared ones when none are given."""
    if conformance_target.features is not None:
        return conformance_target.features
    cls = default_registry().resolve(conformance_target.type, conformance_target.version).load()
    features = getattr(cls(), "features", None)
    return frozenset(str(f) for f in (features() if callable(features) else ()))


@pytest.fixture(autouse=True)
def _feature_gate(request: pytest.FixtureRequest) -> None:
    if "conformance_target" not in request.fixturenames:
        return
    expected: frozenset[str] = request.getfixturevalue("expected_features")
    target: Target = request.getfixturevalue("conformance_target")
    for marker in request.node.iter_markers("requires_features"):
        missing = [str(f) for f in marker.args if str(f) not in expected]
        if missing:
            pytest.skip(f"{target.name} does not declare {', '.join(missing)}")
    for marker in request.node.iter_markers("without_features"):
        present = [str(f) for f in marker.args if str(f) in expected]
        if present:
            pytest.skip(f"{target.name} declares {', '.join(present)}")


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


def option(target: Target, name: str, default: Any = None) -> Any:
    """A suite option of the target (``options:`` in the matrix), or ``default``."""
    return target.options.get(name, default)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")

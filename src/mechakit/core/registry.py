"""Discovery: plug-ins announce component specs through the ``mechakit.components`` entry points.

A spec names its class by import path (a string), so listing components imports nothing
but the plug-in modules themselves; a driver module is imported only when built, and its
SDK only inside ``init``.
"""

from __future__ import annotations

import builtins
import difflib
import importlib
import importlib.metadata
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import pluggy

from .building_blocks import CATEGORIES
from .errors import ComponentNotFoundError, ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from .component import Component

PROJECT = "mechakit"
ENTRY_POINT_GROUP = "mechakit.components"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def _findable(module: str) -> bool:
    """``find_spec`` without its exception for a dotted name whose parent is missing
    (``google.cloud.pubsub`` without ``google``)."""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ImportError:
        return False


@dataclass(frozen=True)
class ComponentSpec:
    """What a plug-in says about one component: enough to list it without importing it."""

    type: str
    """The type string users write in ``spec.type``, e.g. ``state.redis``."""
    target: str
    """``module:Class`` of the driver."""
    version: str = "v1"
    install_hint: str = ""
    """Shown as is when a module in ``requires`` is missing: the exact command that installs
    it, e.g. ``pip install 'mechakit[redis]'`` or ``pip install 'my-package[sdk]'``. Nothing
    is derived from it or guessed when it is empty (fsspec's per-protocol "err" message)."""
    requires: tuple[str, ...] = ()
    """Top-level modules the driver imports lazily; used to tell whether it is installed."""
    status: str = "stable"
    description: str = ""
    aliases: tuple[str, ...] = ()
    plugin: str = field(default="", compare=False)

    @property
    def category(self) -> str:
        return self.type.split(".", 1)[0]

    def installed(self) -> bool:
        """Whether every module in ``requires`` can be imported (checked without importing)."""
        return all(_findable(module) for module in self.requires)

    def load(self) -> builtins.type[Component[Any]]:
        """Import the driver class; a missing SDK becomes an error that says what to install."""
        module_name, _, attr = self.target.partition(":")
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MissingDependencyError(
                    f"needs the {module!r} package, which is not installed: {self.install_hint}"
                    if self.install_hint
                    else f"needs the {module!r} package, which is not installed ({exc})",
                    component=self.type,
                ) from exc
        module_obj = importlib.import_module(module_name)
        cls = getattr(module_obj, attr)
        from .component import Component  # here: listing types needs no pydantic

        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise ComponentNotFoundError(
                f"{self.target} is not a mechakit Component class", component=self.type
            )
        return cls


class ComponentHookspecs:
    """The hooks a plug-in implements."""

    @hookspec
    def mechakit_components(self) -> Sequence[ComponentSpec]:  # type: ignore[empty-body]
        """Return the component specs this plug-in provides."""


class Registry:
    """Every component spec from every installed plug-in, looked up by type and version.

    Two specs for the same type (or alias) and version are refused when the registry is
    built, naming both distributions: which one would win is an accident of install order.
    """

    def __init__(self, plugins: Iterable[object] = (), *, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(ComponentHookspecs)
        self._distributions: dict[str, tuple[str, str]] = {}
        """Plug-in name → (project name, version) of the distribution whose entry point it is."""
        if load_entry_points:
            self._load_entry_points()
        for plugin in plugins:
            self._pm.register(plugin)
        self._specs: dict[tuple[str, str], ComponentSpec] | None = None
        self._index()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plug-in object or module at run time (tests, embedding applications).

        A plug-in announcing a type that is already registered is refused and not kept.
        """
        registered_as = self._pm.register(plugin, name=name)
        self._specs = None
        try:
            self._index()
        except ConfigurationError:
            self._pm.unregister(plugin, name=registered_as)
            self._specs = None
            raise

    def _load_entry_points(self) -> None:
        """pluggy's ``load_setuptools_entrypoints``, except that an entry point name already
        taken by another distribution is an error: pluggy skips it, hiding that plug-in."""
        for dist in importlib.metadata.distributions():
            entry_points = dist.entry_points.select(group=ENTRY_POINT_GROUP)
            if not entry_points:
                continue
            project = (dist.metadata["name"], dist.version)
            for entry_point in entry_points:
                taken_by = self._distributions.get(entry_point.name)
                if taken_by is None:
                    self._pm.register(entry_point.load(), name=entry_point.name)
                    self._distributions[entry_point.name] = project
                elif _canonical(taken_by[0]) != _canonical(project[0]):
                    raise ConfigurationError(
                        f"entry point {entry_point.name!r} of group {ENTRY_POINT_GROUP!r} is "
                        f"declared by both {' '.join(taken_by)!r} and {' '.join(project)!r}, "
                        "so only one of them can load; uninstall one of them"
                    )
                # Otherwise it is the same project again, further down sys.path: like an
                # import, the first copy wins.

    def _index(self) -> dict[tuple[str, str], ComponentSpec]:
        if self._specs is None:
            specs: dict[tuple[str, str], ComponentSpec] = {}
            for impl in self._pm.hook.mechakit_components.get_hookimpls():
                plugin_name = self._pm.get_name(impl.plugin) or ""
                specs_of_plugin = cast("Sequence[ComponentSpec]", impl.function())
                for spec in specs_of_plugin:
                    tagged = replace(spec, plugin=plugin_name)
                    for type_name in (spec.type, *spec.aliases):
                        key = (type_name.lower(), spec.version.lower())
                        if key in specs:
                            raise self._registered_twice(type_name, specs[key], tagged)
                        specs[key] = tagged
            self._specs = specs
        return self._specs

    def _registered_twice(
        self, type_name: str, first: ComponentSpec, second: ComponentSpec
    ) -> ConfigurationError:
        distributions = {name: " ".join(dist) for name, dist in self._distributions.items()}
        origins = [
            repr(distributions[s.plugin]) if s.plugin in distributions else f"plug-in {s.plugin!r}"
            for s in (first, second)
        ]
        alias_of = [repr(s.type) for s in (first, second) if s.type.lower() != type_name.lower()]
        as_alias = f" (as an alias of {' and of '.join(alias_of)})" if alias_of else ""
        what = f"component type {type_name!r} {second.version}{as_alias}"
        if origins[0] == origins[1]:
            reason = (
                f"{what} is registered twice by {origins[0]}; "
                "each type and version must be announced once"
            )
        else:
            installed = first.plugin in distributions and second.plugin in distributions
            remedy = "uninstall one of them" if installed else "register only one of them"
            reason = f"{what} is registered by both {origins[0]} and {origins[1]}; {remedy}"
        return ConfigurationError(reason, component=type_name)

    def specs(self, category: str | None = None) -> list[ComponentSpec]:
        seen: dict[tuple[str, str], ComponentSpec] = {}
        for spec in self._index().values():
            seen.setdefault((spec.type, spec.version), spec)
        found = [s for s in seen.values() if category is None or s.category == category]
        return sorted(found, key=lambda s: (s.type, s.version))

    def resolve(self, type_name: str, version: str = "v1") -> ComponentSpec:
        """The spec for ``type_name``/``version``, or an error listing near matches."""
        version = (version or "v1").lower()
        index = self._index()
        spec = index.get((type_name.lower(), version))
        if spec is not None:
            return spec
        versions = sorted(v for (t, v) in index if t == type_name.lower())
        if versions:
            raise ComponentNotFoundError(
                f"version {version!r} of {type_name!r} is not available "
                f"(installed versions: {', '.join(versions)})",
                component=type_name,
                field="spec.version",
            )
        known = sorted({t for (t, _) in index})
        near = difflib.get_close_matches(type_name.lower(), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        category = type_name.split(".", 1)[0]
        if category not in CATEGORIES:
            hint += f" (the type must start with one of: {', '.join(CATEGORIES)})"
        else:
            hint += (
                " If it comes from a plug-in package, install that package; "
                "`mechakit components list` shows what is installed."
            )
        raise ComponentNotFoundError(
            f"unknown component type {type_name!r}{hint}", component=type_name, field="spec.type"
        )

    def create(self, type_name: str, version: str = "v1") -> Component[Any]:
        """A fresh, uninitialised driver instance."""
        cls = self.resolve(type_name, version).load()
        return cls()


def _canonical(project_name: str) -> str:
    """The project name as pip compares it (PEP 503): ``My_Pkg`` and ``my-pkg`` are one."""
    return re.sub(r"[-_.]+", "-", project_name).lower()


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over installed entry points (built on first use)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default

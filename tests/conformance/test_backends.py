"""Backends are named, never registered by importing a module: a short name or module:factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechakit.conformance.backends import (
    Backend,
    BackendInfo,
    UnknownBackendError,
    known_backends,
    provision,
    resolve_backend,
)
from mechakit.conformance.backends_redis import RedisBackend

HERE = __name__
"""Matrix files name this module's factories as ``test_backends:<factory>``."""


class FixedBackend(Backend):
    name = "fixed"

    def start_local(self, workdir: Path) -> BackendInfo:
        return BackendInfo({"url": "fixed://here"}, source="test factory")


def make_something_else() -> object:
    return object()


def make_nothing_at_all() -> Backend:
    raise RuntimeError("no server here")


def test_a_backend_is_provisioned_from_its_module_and_factory() -> None:
    info = provision(f"{HERE}:FixedBackend", environ={})
    assert (info.values, info.source) == ({"url": "fixed://here"}, "test factory")


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("missing", "cannot load"),
        ("make_something_else", "returned object, not a Backend"),
        ("make_nothing_at_all", r"make_nothing_at_all\(\) failed: no server here"),
    ],
)
def test_a_factory_that_gives_no_backend_is_an_error_not_a_skip(factory: str, reason: str) -> None:
    with pytest.raises(UnknownBackendError, match=reason):
        provision(f"{HERE}:{factory}", environ={})


def test_an_unknown_short_name_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'rediss'.*redis-cluster"):
        provision("rediss", environ={})


def test_short_backend_names_resolve_without_registration() -> None:
    assert isinstance(resolve_backend("redis"), RedisBackend)
    assert set(known_backends()) >= {"redis", "redis-cluster", "postgresql", "moto", "vault"}


class _FakeContainer:
    """What ``started`` needs of a testcontainers container (no Docker here)."""

    def __init__(self, fail_start: bool = False) -> None:
        self.fail_start, self.stopped = fail_start, False

    def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("no Docker")

    def get_container_host_ip(self) -> str:
        return "10.0.0.2"

    def get_exposed_port(self, port: int) -> int:
        return port + 30000

    def stop(self) -> None:
        self.stopped = True


def test_a_started_container_gives_its_host_and_port_and_a_failed_one_is_unavailable() -> None:
    from mechakit.conformance.backends import BackendUnavailable
    from mechakit.conformance.containers import started

    assert started(_FakeContainer(), "img:1", port=6379) == ("10.0.0.2", "36379")
    never_ready = _FakeContainer()

    def ready(host: str, port: str) -> None:
        raise TimeoutError(f"{host}:{port} never answered")

    with pytest.raises(BackendUnavailable, match=r"could not start img:1: 10.0.0.2:36379"):
        started(never_ready, "img:1", ready, port=6379)
    assert never_ready.stopped
    with pytest.raises(BackendUnavailable, match="no Docker"):
        started(_FakeContainer(fail_start=True), "img:1")

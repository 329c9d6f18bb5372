"""The PostgreSQL fixture for the driver tests: one private server per test module, when
started locally, so that a module which restarts it disturbs no other.

Test modules load it with ``pytest_plugins = ["postgres_server"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[BackendInfo]:
    try:
        info = provision("postgresql")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()

"""The moto server fixture for the AWS driver tests: one private server per test module.

Test modules load it with ``pytest_plugins = ["moto_server"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision


@pytest.fixture(scope="module")
def moto() -> Iterator[BackendInfo]:
    try:
        info = provision("moto")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()

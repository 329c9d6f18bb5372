"""The state conformance suite over every state target in tests/conformance/matrix."""

from __future__ import annotations

from mechakit.conformance.suites.state import StateSuite


class TestState(StateSuite):
    pass

"""Every conformance suite as a test class; ``mechakit conformance FILE`` runs the one of FILE's type.

Run by hand: ``pytest -p mechakit.conformance.plugin --mechakit-component c.yaml
-o asyncio_mode=auto src/mechakit/conformance/all_suites.py::TestState``.
"""

from __future__ import annotations

from mechakit.conformance.suites.bindings import BindingsSuite
from mechakit.conformance.suites.configuration import ConfigurationSuite
from mechakit.conformance.suites.lock import LockSuite
from mechakit.conformance.suites.nameresolution import NameResolutionSuite
from mechakit.conformance.suites.pubsub import PubSubSuite
from mechakit.conformance.suites.secretstores import SecretStoreSuite
from mechakit.conformance.suites.state import StateSuite


class TestState(StateSuite):
    pass


class TestPubSub(PubSubSuite):
    pass


class TestBindings(BindingsSuite):
    pass


class TestSecretStore(SecretStoreSuite):
    pass


class TestLock(LockSuite):
    pass


class TestConfiguration(ConfigurationSuite):
    pass


class TestNameResolution(NameResolutionSuite):
    pass

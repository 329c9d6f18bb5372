import mechakit.conformance.backends_http  # noqa: F401  (registers the http-echo backend)
from mechakit.conformance.suites.bindings import BindingsSuite


class TestBindings(BindingsSuite):
    pass

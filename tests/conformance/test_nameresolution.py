from mechakit.conformance.suites.nameresolution import NameResolutionSuite


class TestNameResolution(NameResolutionSuite):
    pass

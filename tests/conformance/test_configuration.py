from mechakit.conformance.suites.configuration import ConfigurationSuite


class TestConfiguration(ConfigurationSuite):
    pass

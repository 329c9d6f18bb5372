from mechakit.conformance.suites.secretstores import SecretStoreSuite


class TestSecretStores(SecretStoreSuite):
    pass

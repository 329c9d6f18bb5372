from mechakit.conformance.suites.pubsub import PubSubSuite


class TestPubSub(PubSubSuite):
    pass

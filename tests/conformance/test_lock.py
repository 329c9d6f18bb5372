from mechakit.conformance.suites.lock import LockSuite


class TestLock(LockSuite):
    pass

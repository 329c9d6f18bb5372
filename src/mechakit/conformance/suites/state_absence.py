"""Absence checks of the state suite: a store that behaves as if it had a feature declares it.

``StateSuite`` inherits these, so they run for every state target that does not declare
the feature: a store that expires items without declaring ``TTL``, or enforces ETags without
declaring ``ETAG``, fails here, with the feature named.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from mechakit.conformance.requirements import without
from mechakit.core.errors import ETagError, InvalidRequestError, NotSupportedError
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest, StateFeature, StateStore

Store = StateStore[Any]
TTL_WATCH = 3.0
"""How long an item given a 1 s TTL must stay readable (the TTL tests allow 3 s to expire)."""
UNKNOWN_ETAG = "conformance-stale-etag"
"""Sent as the stale ETag by a store that hands out none."""


def _key(what: str) -> str:
    return f"conformance-{what}-{uuid.uuid4().hex}"


class StateAbsenceChecks:
    @without(StateFeature.TTL)
    async def test_without_ttl_an_item_outlives_its_ttl(self, component: Store) -> None:
        key = _key("ttl")
        try:
            await component.set(SetRequest(key, "kept", metadata={"ttlInSeconds": "1"}))
        except (NotSupportedError, InvalidRequestError):
            return  # refused outright: nothing can expire
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TTL_WATCH
        while loop.time() < deadline:
            if await component.get(GetRequest(key)) is None:
                pytest.fail(
                    f"{key!r} expired after its ttlInSeconds although the store does not "
                    "declare TTL"
                )
            await asyncio.sleep(0.2)

    @without(StateFeature.ETAG)
    async def test_without_etag_a_stale_etag_is_ignored_or_refused(self, component: Store) -> None:
        key = _key("etag")
        await component.set(SetRequest(key, "first"))
        first = await component.get(GetRequest(key))
        stale = (first.etag if first is not None else None) or UNKNOWN_ETAG
        await component.set(SetRequest(key, "second"))
        current = await component.get(GetRequest(key))
        try:
            await component.set(SetRequest(key, "third", etag=stale))
        except ETagError as exc:
            pytest.fail(
                f"a stale ETag was rejected ({exc}) although the store does not declare ETAG"
            )
        except (NotSupportedError, InvalidRequestError):
            if current is not None and current.etag:
                await _refused_too(component, SetRequest(key, "fourth", etag=current.etag))
        else:
            item = await component.get(GetRequest(key))
            assert item is not None and item.value == "third", (
                "an ignored ETag must not stop the write"
            )
        try:
            await component.delete(DeleteRequest(key, etag=stale))
        except ETagError as exc:
            pytest.fail(
                f"a delete with a stale ETag was rejected ({exc}) although the store does not "
                "declare ETAG"
            )
        except (NotSupportedError, InvalidRequestError):
            pass


async def _refused_too(store: Store, request: SetRequest) -> None:
    """A store refusing ETags refuses the current one as well; accepting it is a check."""
    try:
        await store.set(request)
    except (NotSupportedError, InvalidRequestError):
        return
    pytest.fail(
        "the store refuses a stale ETag but accepts the current one: that is an ETag check, "
        "although the store does not declare ETAG"
    )

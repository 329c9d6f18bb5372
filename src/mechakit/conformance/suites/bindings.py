"""Conformance suite for bindings, output and input.

Output tests run when the driver is an ``OutputBinding``, input tests when it is an
``InputBinding``. Target options (``options:`` in the matrix):

- ``direction``: ``input``, ``output`` or ``both``; checked against the classes the driver
  implements (absence included).
- ``operations``: the exact list of operations the driver reports (absence included).
- ``crud``: run the create/get/list/delete round trip (default: when the driver lists
  create, get and delete).
- ``name_metadata``: request metadata naming the item for the round trip (default
  ``fileName``).
- ``deleted_get``: what get of a deleted item does: ``not_found`` (default, raises
  ``NotFoundError``) or ``empty`` (returns no data).
- ``request_metadata``: metadata added to every request the suite sends.
- ``echo_operation``: an operation whose response data is the request data (e.g. ``post``
  against the ``http-echo`` backend).
- ``loopback``: an operation (e.g. ``create``) whose output the binding's own input reads
  (a queue or topic binding): the input tests send a unique payload with it after ``read``
  and wait for that payload; without it they wait for whatever event comes (cron).
- ``read_timeout``: seconds an input binding may take to deliver an event (default 10).
- ``quiet_period``: seconds after ``cancel`` during which no event may arrive (default 1.5).

Features: bindings declare none; the suite checks the driver declares exactly the
target's (normally empty) list.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from mechakit.conformance.plugin import option
from mechakit.conformance.targets import Target
from mechakit.core.bindings import (
    BindingEvent,
    InputBinding,
    InvokeRequest,
    InvokeResponse,
    OutputBinding,
)
from mechakit.core.errors import NotFoundError, NotSupportedError

pytestmark = pytest.mark.asyncio


def _option(target: Target, name: str, default: Any = None) -> Any:
    return option(target, name, default)


def _output(component: object) -> OutputBinding[Any]:
    if not isinstance(component, OutputBinding):
        pytest.skip("not an output binding")
    return component


def _input(component: object) -> InputBinding[Any]:
    if not isinstance(component, InputBinding):
        pytest.skip("not an input binding")
    return component


async def _invoke(
    binding: OutputBinding[Any],
    target: Target,
    operation: str,
    data: bytes = b"",
    metadata: Mapping[str, str] | None = None,
) -> InvokeResponse:
    extra = {str(k): str(v) for k, v in (_option(target, "request_metadata") or {}).items()}
    return await binding.invoke(
        InvokeRequest(operation=operation, data=data, metadata={**extra, **(metadata or {})})
    )


def _crud(binding: OutputBinding[Any], target: Target) -> str:
    """The metadata key naming an item; skips unless the round trip applies to the target."""
    operations = {op.lower() for op in binding.operations()}
    enabled = _option(target, "crud", {"create", "get", "delete"} <= operations)
    if not enabled:
        pytest.skip("the create/get/delete round trip does not apply to this target")
    return str(_option(target, "name_metadata", "fileName"))


def _listed(payload: bytes, name: str) -> bool:
    """Whether a list response names ``name``: as an element, or a field of an element."""
    items = json.loads(payload) if payload.strip() else []
    if isinstance(items, dict):
        items = next((v for v in items.values() if isinstance(v, list)), [])
    return any(
        item == name or (isinstance(item, dict) and name in map(str, item.values()))
        for item in items
    )


class BindingsSuite:
    category = "bindings"
    pytestmark = [pytest.mark.asyncio]  # reaches the test classes that subclass this suite

    async def test_declared_features_are_exactly_the_expected_ones(
        self, component: object, expected_features: frozenset[str]
    ) -> None:
        features = getattr(component, "features", None)
        declared = {str(f) for f in features()} if callable(features) else set()
        assert declared == set(expected_features)

    async def test_direction_matches_the_implemented_contracts(
        self, component: object, conformance_target: Target
    ) -> None:
        direction = _option(conformance_target, "direction")
        if direction is None:
            pytest.skip("the target gives no 'direction' option")
        assert direction in ("input", "output", "both"), f"bad direction option {direction!r}"
        assert isinstance(component, InputBinding) == (direction in ("input", "both"))
        assert isinstance(component, OutputBinding) == (direction in ("output", "both"))

    async def test_operations_are_exactly_the_listed_ones(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _output(component)
        listed = _option(conformance_target, "operations")
        if listed is None:
            pytest.skip("the target gives no 'operations' option")
        assert sorted(op.lower() for op in binding.operations()) == sorted(
            str(op).lower() for op in listed
        )

    async def test_unknown_operation_is_rejected_as_not_supported(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _output(component)
        with pytest.raises(NotSupportedError) as caught:
            await _invoke(binding, conformance_target, "mechakit-no-such-operation")
        assert "mechakit-no-such-operation" in str(caught.value)

    async def test_create_then_get_returns_the_same_data(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _output(component)
        key = _crud(binding, conformance_target)
        name, data = f"conformance-{uuid.uuid4().hex}", b"mechakit conformance \x00\xff data"
        await _invoke(binding, conformance_target, "create", data, {key: name})
        got = await _invoke(binding, conformance_target, "get", metadata={key: name})
        assert got.data == data

    async def test_list_contains_a_created_item(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _output(component)
        key = _crud(binding, conformance_target)
        if "list" not in {op.lower() for op in binding.operations()}:
            pytest.skip("the binding has no list operation")
        name = f"conformance-{uuid.uuid4().hex}"
        await _invoke(binding, conformance_target, "create", b"listed", {key: name})
        listed = await _invoke(binding, conformance_target, "list")
        assert _listed(listed.data, name), listed.data[:500]

    async def test_deleted_item_is_gone(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _output(component)
        key = _crud(binding, conformance_target)
        name = f"conformance-{uuid.uuid4().hex}"
        await _invoke(binding, conformance_target, "create", b"short-lived", {key: name})
        await _invoke(binding, conformance_target, "delete", metadata={key: name})
        if _option(conformance_target, "deleted_get", "not_found") == "empty":
            got = await _invoke(binding, conformance_target, "get", metadata={key: name})
            assert got.data == b""
        else:
            with pytest.raises(NotFoundError):
                await _invoke(binding, conformance_target, "get", metadata={key: name})

    async def test_echo_operation_returns_the_request_data(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _output(component)
        operation = _option(conformance_target, "echo_operation")
        if operation is None:
            pytest.skip("the target gives no 'echo_operation' option")
        data = json.dumps({"conformance": uuid.uuid4().hex}).encode()
        response = await _invoke(binding, conformance_target, str(operation), data)
        assert response.data == data

    async def test_read_delivers_an_event_within_the_read_timeout(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _input(component)
        events: asyncio.Queue[BindingEvent] = asyncio.Queue()

        async def handler(event: BindingEvent) -> None:
            await events.put(event)

        subscription = await binding.read(handler)
        try:
            timeout = float(_option(conformance_target, "read_timeout", 10))
            event = await _next_event(component, conformance_target, events, timeout)
            assert isinstance(event.data, bytes)
        finally:
            await subscription.cancel()

    async def test_cancel_stops_delivery(
        self, component: object, conformance_target: Target
    ) -> None:
        binding = _input(component)
        events: asyncio.Queue[BindingEvent] = asyncio.Queue()

        async def handler(event: BindingEvent) -> None:
            await events.put(event)

        subscription = await binding.read(handler)
        timeout = float(_option(conformance_target, "read_timeout", 10))
        try:
            await _next_event(component, conformance_target, events, timeout)
        finally:
            await subscription.cancel()
        assert not subscription.active
        delivered = events.qsize()
        loopback = _option(conformance_target, "loopback")
        if loopback:  # sent after cancel: must not arrive here
            await _invoke(_output(component), conformance_target, str(loopback), b"after-cancel")
        await asyncio.sleep(float(_option(conformance_target, "quiet_period", 1.5)))
        assert events.qsize() == delivered, "events arrived after cancel"
        await subscription.cancel()


async def _next_event(
    component: object, target: Target, events: asyncio.Queue[BindingEvent], within: float
) -> BindingEvent:
    """The next event; with ``loopback``, the one carrying a payload sent now."""
    loopback = _option(target, "loopback")
    if not loopback:
        return await asyncio.wait_for(events.get(), within)
    payload = f"conformance-{uuid.uuid4().hex}".encode()
    await _invoke(_output(component), target, str(loopback), payload)

    async def sent() -> BindingEvent:
        while True:
            event = await events.get()
            if event.data == payload:
                return event

    return await asyncio.wait_for(sent(), within)

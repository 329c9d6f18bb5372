"""Helpers of the RabbitMQ driver tests (the fixtures are in ``rabbitmq_server``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

TIMEOUT = 10.0
Make = Callable[..., Awaitable[Any]]


def unique(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:8]}"


async def wait_for(check: Callable[[], bool], what: str, within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)

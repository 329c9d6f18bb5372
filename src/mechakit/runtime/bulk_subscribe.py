"""Bulk subscribe: a subscription's events go to the app in batches, as daprd sends them.

A subscription with ``bulkSubscribe.enabled`` (declarative, ``GET /dapr/subscribe`` or gRPC
``ListTopicSubscriptions``) still gets its messages one by one from the pub/sub driver, on
the one delivery engine (which then runs up to ``maxMessagesCount`` handlers at once, so a
batch can fill). Each handler call hands its event to the subscription's :class:`Batcher`
and waits for the batch's answer: a batch goes to the app when it holds
``maxMessagesCount`` entries or ``maxAwaitDurationMs`` after its first entry came, and the
wait starts again with the next batch's first entry (upstream's timer kept running across
count-triggered flushes, dapr#9211). Entries of one batch with different routes go as one
call per route.

The app gets daprd's envelope (HTTP ``POST <route>`` with ``{"id", "type":
"com.dapr.event.sent.bulk", "topic", "pubsubname", "metadata", "entries": [{"entryId",
"event", "metadata", "contentType"}]}``; gRPC ``OnBulkTopicEvent``, or
``OnBulkTopicEventAlpha1`` for apps without it) and answers a status per entry. SUCCESS
acks that entry's message and DROP drops it; RETRY, an unknown or missing status, a failed
call (any status but 2xx and 404) and an unreachable app retry it through the engine, which
counts its deliveries and dead-letters it as for any other subscription; HTTP 404 (gRPC
UNIMPLEMENTED) drops the whole batch, as daprd does.

The component's ``inbound`` resiliency policy wraps each batch call as daprd's bulk
resiliency does: a timeout bounds one call, and a retry sends again only the entries not
yet answered SUCCESS or DROP (what it took is settled at once); a batch with entries left
after the retries, or refused by an open circuit breaker, has them redelivered through the
engine. A batch the app refused because it is unhealthy
(:class:`~mechakit.core.delivery.NotDelivered`) goes back to the broker uncounted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechakit.core import cloudevents
from mechakit.core.delivery import NotDelivered
from mechakit.core.pubsub import Message

from .resiliency import Policy, run_under
from .routing import AppSubscription, BulkConfig

log = logging.getLogger("mechakit.delivery")

BULK_EVENT_TYPE = "com.dapr.event.sent.bulk"
"""The envelope's ``type``, as daprd sets it."""


@dataclass(frozen=True)
class BulkEntry:
    """One message of a batch, as the app gets it."""

    entry_id: str
    event: Mapping[str, Any]
    """The CloudEvent the app would get for this message alone (routing and expiry read it)."""
    raw: bytes | None
    """The message's bytes as they are, for a ``rawPayload`` subscription; else None."""
    metadata: Mapping[str, str]
    content_type: str

    def http_item(self) -> dict[str, Any]:
        """The entry in an HTTP envelope: a raw payload goes base64-encoded, as daprd sends it."""
        event: Any = self.event if self.raw is None else base64.b64encode(self.raw).decode()
        return {
            "entryId": self.entry_id,
            "event": event,
            "metadata": dict(self.metadata),
            "contentType": self.content_type,
        }


BulkAnswers = dict[str, str]
"""Entry id → the app's status word for it (``SUCCESS``, ``RETRY``, ``DROP`` or what it
sent); an entry it left out has none."""

BulkSender = Callable[[Sequence[BulkEntry], str, AppSubscription], Awaitable["BulkOutcome"]]
"""Sends one batch to a route (``AppChannel.send_bulk``)."""


@dataclass(frozen=True)
class BulkOutcome:
    """What became of a batch: per-entry statuses, or one status for all of it."""

    detail: str
    """How the app answered, for logs: ``POST /orders: HTTP 200`` ..."""
    statuses: BulkAnswers = field(default_factory=dict)
    whole: str | None = None
    """Set when the call failed as a whole: ``RETRY`` (unreachable, HTTP 500 ...) or
    ``DROP`` (HTTP 404, gRPC UNIMPLEMENTED)."""

    def status_of(self, entry_id: str) -> str:
        if self.whole is not None:
            return self.whole
        word = self.statuses.get(entry_id, "").strip().upper()
        return word if word in ("SUCCESS", "DROP") else "RETRY"


def http_envelope(entries: Sequence[BulkEntry], subscription: AppSubscription) -> bytes:
    """daprd's HTTP bulk envelope for ``entries``."""
    envelope = {
        "id": str(uuid.uuid4()),
        "type": BULK_EVENT_TYPE,
        "topic": subscription.topic,
        "pubsubname": subscription.pubsub_name,
        "metadata": {"pubsubName": subscription.pubsub_name},
        "entries": [entry.http_item() for entry in entries],
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def http_outcome(status_code: int, body: bytes, where: str) -> BulkOutcome:
    """The app's HTTP answer to a batch, read as daprd reads it."""
    detail = f"{where}: HTTP {status_code}"
    if status_code == 404:
        return BulkOutcome(detail, whole="DROP")
    if not 200 <= status_code < 300:
        return BulkOutcome(detail, whole="RETRY")
    try:
        answer = json.loads(body) if body.strip() else {}
    except ValueError:
        return BulkOutcome(f"{detail}, not JSON", whole="RETRY")
    statuses: BulkAnswers = {}
    items = answer.get("statuses") if isinstance(answer, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("entryId"), str):
            status = item.get("status")
            statuses[item["entryId"]] = status if isinstance(status, str) else ""
    return BulkOutcome(detail, statuses=statuses)


_Answer = asyncio.Future[tuple[str, str]]
"""Where a handler waits for its entry's status word and the batch's detail."""


class Batcher:
    """Gathers one subscription's events into batches and hands each to ``send``, under the
    ``policy`` (inbound resiliency) of pub/sub ``component`` when it has one."""

    def __init__(
        self,
        config: BulkConfig,
        subscription: AppSubscription,
        send: BulkSender,
        *,
        component: str = "",
        policy: Policy | None = None,
    ):
        self.config = config
        self._subscription = subscription
        self._send = send
        self._component = component or f"pubsub {subscription.pubsub_name!r}"
        self._policy = policy
        self._pending: list[tuple[BulkEntry, str, _Answer]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, entry: BulkEntry, path: str) -> tuple[str, str]:
        """Adds ``entry`` (for route ``path``) to the pending batch and waits for the app's
        status word for it and the batch's detail."""
        answer: _Answer = asyncio.get_running_loop().create_future()
        self._pending.append((entry, path, answer))
        if len(self._pending) >= self.config.max_messages:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.config.max_await_ms / 1000, self._flush
            )
        return await answer

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [item for item in self._pending if not item[2].done()]  # done: handler cancelled
        self._pending = []
        if not batch:
            return
        task = asyncio.create_task(self._deliver(batch), name="mechakit bulk delivery")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _deliver(self, batch: list[tuple[BulkEntry, str, _Answer]]) -> None:
        by_path: dict[str, list[tuple[BulkEntry, _Answer]]] = {}
        for entry, path, answer in batch:
            by_path.setdefault(path, []).append((entry, answer))
        await asyncio.gather(*(self._deliver_to(path, items) for path, items in by_path.items()))

    async def _deliver_to(self, path: str, items: list[tuple[BulkEntry, _Answer]]) -> None:
        """Sends the batch (again, under the policy, with what is still unanswered) and
        settles each entry's wait with the app's status word for it."""
        from .app_channels import AppRetryError  # app_channels imports this module

        pending = items
        last = ""

        async def attempt() -> None:
            nonlocal pending, last
            pending = [item for item in pending if not item[1].done()]  # done: cancelled
            if not pending:
                return
            outcome = await self._send_once(path, [entry for entry, _ in pending])
            last = outcome.detail
            log.debug(
                "batch of %d event(s) on topic %r: %s",
                len(pending),
                self._subscription.topic,
                outcome.detail,
            )
            left = []
            for entry, answer in pending:
                word = outcome.status_of(entry.entry_id)
                if word == "RETRY":
                    left.append((entry, answer))
                elif not answer.done():
                    answer.set_result((word, outcome.detail))
            pending = left
            if left:
                raise AppRetryError(
                    f"{len(left)} of {len(items)} event(s) on topic "
                    f"{self._subscription.topic!r} to be retried ({outcome.detail})",
                    component=self._component,
                )

        try:
            await run_under(self._policy, attempt)
        except NotDelivered as exc:
            for _, answer in pending:
                if not answer.done():
                    answer.set_exception(NotDelivered(str(exc)))
        except Exception as exc:
            detail = last if isinstance(exc, AppRetryError) and last else str(exc)
            for _, answer in pending:
                if not answer.done():
                    answer.set_result(("RETRY", detail))

    async def _send_once(self, path: str, entries: list[BulkEntry]) -> BulkOutcome:
        try:
            return await self._send(entries, path, self._subscription)
        except NotDelivered:
            raise
        except Exception as exc:  # a bug in a channel must not leave handlers waiting
            log.exception("bulk delivery to %s failed", path)
            return BulkOutcome(f"{path}: {type(exc).__name__}: {exc}", whole="RETRY")


def bulk_entry(
    message: Message, event: Mapping[str, Any], subscription: AppSubscription
) -> BulkEntry:
    """The batch entry for ``message`` whose CloudEvent is ``event``."""
    raw = subscription.raw_payload
    content_type = (
        (message.content_type or "application/octet-stream") if raw else cloudevents.CONTENT_TYPE
    )
    return BulkEntry(
        entry_id=str(uuid.uuid4()),
        event=event,
        raw=bytes(message.data) if raw else None,
        metadata=dict(message.metadata),
        content_type=content_type,
    )


__all__ = [
    "BULK_EVENT_TYPE",
    "Batcher",
    "BulkEntry",
    "BulkOutcome",
    "BulkSender",
    "bulk_entry",
    "http_envelope",
    "http_outcome",
]

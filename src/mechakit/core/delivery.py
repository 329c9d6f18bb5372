"""At-least-once delivery from a broker to handlers: the one loop every pub/sub driver uses.

This is the driver side (broker → the handler given to ``PubSub.subscribe``), not the
sidecar's delivery to the app (``mechakit.runtime.delivery``). A driver implements a
``Transport`` (``mechakit.core.pubsub``) over its broker and hands it to a
``DeliveryEngine``, which owns everything brokers share, as kombu's QoS does for its
channels:

- receiving only while there is room (``prefetch`` deliveries unsettled, at most) and
  calling at most ``concurrency`` handlers at once;
- acking only after the handler returned; ``DropMessage`` acks (Dapr's DROP); any other
  exception asks the transport to deliver again after a doubling wait;
- ``NotDelivered`` (the handler could not take it now) gives it back uncounted;
- ``max_deliveries``: then the dead-letter topic (published, then acked) or an acked drop
  with an error log;
- ordering keys, expiry, duplicate deliveries, acks sent together, backoff after a failed
  receive, and one wording for every log line, naming the component and the topic;
- stopping: receiving ends, handlers that have started may finish (``stop_grace``, then
  they are cancelled), the rest is released; nothing is acked unless its handler succeeded.

A driver whose settings model subclasses ``DeliverySettings`` gets the engine's metadata
(``maxDeliveries``, ``concurrency``, ``deadLetterTopic``) and its policy from there, and one
that runs an engine per subscription keeps them in ``SubscriptionEngines``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field

from .component import Backoff, Component, Subscription, stop_tasks
from .errors import BulkError, ComponentError, InvalidRequestError
from .metadata import Settings, setting
from .pubsub import Delivery, DropMessage, Handler, SubscribeRequest, Transport
from .state import TTL_METADATA

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class NotDelivered(Exception):
    """Raised by a handler that could not hand the message on (its app is unhealthy): the
    message goes back to the broker as one that reached no handler, so it uses up none of
    ``max_deliveries`` and waits no redelivery backoff."""


@dataclass(frozen=True)
class DeliveryPolicy:
    """How an engine delivers; a driver builds it from its settings."""

    concurrency: int = 1
    """Handler calls that may run at once."""
    prefetch: int = 0
    """Deliveries received and not yet settled, at most (0: ``concurrency``)."""
    max_deliveries: int = 0
    """Deliveries of a message (the first included) before it is given up; 0: never."""
    redelivery_delay: float | None = 1.0
    """Wait before redelivering a failed message, doubling per delivery up to
    ``max_redelivery_delay``. None: never ask; the message stays unacked for the broker."""
    max_redelivery_delay: float | None = None
    """Upper bound of the doubling wait (None: no doubling, always ``redelivery_delay``)."""
    drop_exhausted: bool = True
    """Without a dead-letter topic a given-up message is acked and logged as dropped; False
    keeps redelivering it (a broker-side dead-letter queue or a keep setting takes over)."""
    give_up_on_receive: bool = True
    """A delivery that arrives already past ``max_deliveries`` (its consumers crashed or
    timed out) is given up without a handler call. Off for brokers whose count also
    includes receives that never reached a handler."""
    stop_grace: float | None = None
    """Seconds a stopping engine waits for running handlers before cancelling them."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.prefetch < 0 or self.max_deliveries < 0:
            raise ValueError(f"invalid delivery policy {self}")

    @property
    def room(self) -> int:
        return self.prefetch or self.concurrency

    def redelivery_wait(self, delivery_count: int) -> float | None:
        """Seconds to wait before delivering again a message whose ``delivery_count``-th
        delivery failed."""
        if self.redelivery_delay is None:
            return None
        cap = self.max_redelivery_delay
        if cap is None:
            return self.redelivery_delay
        exponent = min(max(delivery_count - 1, 0), 32)
        return min(self.redelivery_delay * float(2**exponent), cap)


def max_deliveries_setting(default: int, *, description: str) -> Any:
    """The ``maxDeliveries`` field (also accepted as ``maxDeliveryCount``); the default is
    the example."""
    return setting(
        default, aliases=("maxDeliveryCount",), description=description, example=str(default)
    )


def concurrency_setting(*, description: str) -> Any:
    """The ``concurrency`` field: handler calls at once per subscription, 10 by default."""
    return setting(10, description=description, example="10")


def dead_letter_topic_setting(*, description: str) -> Any:
    """The ``deadLetterTopic`` field: the component's default for subscriptions naming none."""
    return setting("", description=description, example="poison")


class DeliverySettings(Settings):
    """The engine's metadata, for drivers that take them from the component's metadata.

    A driver whose default or wording differs declares the field again with the helper
    above (``max_deliveries_setting`` …), so that its name and alias stay the same, and adds
    what its broker decides (redelivery, prefetch, stop grace) by overriding
    ``delivery_policy``.
    """

    max_deliveries: Annotated[int, Field(ge=1)] = max_deliveries_setting(
        3,
        description=(
            "Deliveries of a message (the first included) before it goes to the "
            "dead-letter topic, or is dropped when there is none."
        ),
    )
    concurrency: Annotated[int, Field(ge=1)] = concurrency_setting(
        description="Handler calls that may run at once, per subscription."
    )
    dead_letter_topic: str = dead_letter_topic_setting(
        description=(
            "Where messages go once their deliveries are used up, for subscriptions "
            "that name none. Empty: such messages are dropped with an error log."
        )
    )

    def delivery_policy(self) -> DeliveryPolicy:
        """``concurrency`` and ``maxDeliveries`` as the engine's policy."""
        return DeliveryPolicy(concurrency=self.concurrency, max_deliveries=self.max_deliveries)

    def dead_letter_topic_of(self, request: SubscribeRequest) -> str:
        """The subscription's dead-letter topic, else ``deadLetterTopic``."""
        return request.dead_letter_topic or self.dead_letter_topic


DeliverySettingsT = TypeVar("DeliverySettingsT", bound=DeliverySettings)


class SubscriptionEngines(Generic[DeliverySettingsT]):
    """The engines of a component that runs one per subscription, with the policy of its
    ``DeliverySettings``; its ``shut`` stops them all with ``stop``."""

    def __init__(self, component: Component[DeliverySettingsT]) -> None:
        self._component = component
        self._engines: set[DeliveryEngine] = set()

    def start(
        self, transport: Transport, request: SubscribeRequest, handler: Handler
    ) -> Subscription:
        """A new engine over ``transport`` delivering ``request.topic`` to ``handler``."""
        component, settings = self._component, self._component.settings
        policy = settings.delivery_policy()
        if request.min_concurrency > policy.concurrency:
            policy = replace(
                policy,
                concurrency=request.min_concurrency,
                prefetch=max(policy.prefetch, request.min_concurrency),
            )
        engine = DeliveryEngine(transport, policy, label=component.label, log=component.log)
        self._engines = {e for e in self._engines if not e.stopping}
        self._engines.add(engine)
        return engine.subscribe(
            request.topic, handler, dead_letter_topic=settings.dead_letter_topic_of(request)
        )

    async def stop(self) -> None:
        """Stops every engine together (those already stopping too), on behalf of the
        current task, which may be a handler closing its own component; raises the first
        error once all have stopped."""
        engines, self._engines = list(self._engines), set()
        caller = asyncio.current_task()  # each stop() below runs in a task of gather's own
        results = await asyncio.gather(
            *(e.stop(caller=caller) for e in engines), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


class DeliveryEngine:
    """Receives from one ``Transport`` and calls the handler of each message's topic.

    Most drivers run one engine per subscription; a broker with one receive source for
    several topics (an SQS queue) routes them all through one engine.
    """

    def __init__(self, transport: Transport, policy: DeliveryPolicy, *, label: str, log: Log):
        self._transport = transport
        self._policy = policy
        self._label = label
        self._log = log
        self._routes: dict[str, _Route] = {}
        self._in_flight: dict[str, _InFlight] = {}
        """Received and not yet forgotten (settled and its task ended), by Delivery.key."""
        self._tails: dict[str, asyncio.Task[bool]] = {}
        """The last task of each ordering key."""
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._room = asyncio.Event()
        self._unsent_acks: list[Delivery] = []
        self._acking = False
        self._background: set[asyncio.Task[None]] = set()
        self._receiver: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._routes)

    def subscribe(
        self, topic: str, handler: Handler, *, dead_letter_topic: str = ""
    ) -> Subscription:
        """Routes ``topic`` to ``handler``; the first route starts receiving."""
        if self._stopping:
            raise ComponentError(
                f"delivery from {self._transport.source} has stopped", component=self._label
            )
        if topic in self._routes:
            raise InvalidRequestError(
                f"topic {topic!r} already has a handler here", component=self._label, key=topic
            )
        route = _Route(self, topic, handler, dead_letter_topic)
        self._routes[topic] = route
        if self._receiver is None:
            self._receiver = asyncio.create_task(
                self._receive_loop(), name=f"{self._label} receive {self._transport.source}"
            )
        return route

    async def stop(self, *, caller: asyncio.Task[Any] | None = None) -> None:
        """Stops receiving; started handlers may finish within ``stop_grace``; the rest is
        released. ``caller`` (default: the current task) may be one of this engine's
        handlers, cancelling its own subscription: then the engine finishes after it."""
        caller = caller or asyncio.current_task()
        ours = any(e.task is caller for e in self._in_flight.values())
        if self._stopping:
            if not ours:
                await self._stopped.wait()
            return
        self._stopping = True
        for route in self._routes.values():
            route.cancelled = True
        self._routes.clear()
        try:
            if self._receiver is not None:
                await stop_tasks(self._receiver)
            await stop_tasks(*self._tasks(lambda e: not e.started, caller))
            waited = [e for e in self._in_flight.values() if not e.started and not e.settled]
            if waited:  # given back now, so another consumer may take them meanwhile
                await self._release(waited)
            running = self._tasks(lambda e: e.started, caller)
            if running:
                _done, late = await asyncio.wait(running, timeout=self._policy.stop_grace)
                await stop_tasks(*late)
        except asyncio.CancelledError:
            await stop_tasks(*self._tasks(lambda e: True, caller))
            raise
        finally:
            if ours and caller is not None:
                caller.add_done_callback(lambda _task: self._spawn(self._finish()))
            else:
                await self._finish()

    # --- receiving ------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            room = await self._wait_for_room()
            try:
                batch = await self._transport.receive(room)
            except Exception as exc:
                delay = backoff.next()
                self._log.warning(
                    "%s: could not receive from %s: %s; retrying in %.2gs",
                    self._label,
                    self._transport.source,
                    _reason(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            for delivery in batch:
                self._accept(delivery)

    async def _wait_for_room(self) -> int:
        limit = self._policy.room
        while len(self._in_flight) >= limit:
            self._room.clear()
            await self._room.wait()
        return limit - len(self._in_flight)

    def _accept(self, delivery: Delivery) -> None:
        known = self._in_flight.get(delivery.key)
        if known is not None and not known.settled:
            return  # delivered again while still held here (waiting, or a slow handler)
        entry = _InFlight(delivery)
        key = delivery.ordering_key
        after = self._tails.get(key) if key is not None else None
        task = asyncio.create_task(
            self._run(entry, after), name=f"{self._label} {delivery.message.id}"
        )
        entry.task = task
        self._in_flight[delivery.key] = entry
        if key is not None:
            self._tails[key] = task

    def _ended(self, entry: _InFlight) -> None:
        """The last step of an entry's task (not a done callback: one loop turn fewer per
        message). A task cancelled before its first step never gets here; only ``stop``
        cancels those, and it releases them itself."""
        entry.ended = True
        key = entry.delivery.ordering_key
        if key is not None and self._tails.get(key) is entry.task:
            del self._tails[key]
        if entry.settled:
            self._forget(entry)
        elif not self._stopping:  # cancelled (its route was cancelled) before settling
            self._spawn(self._release([entry]))
        # else: stop() releases what is unsettled once every task has ended

    def _forget(self, entry: _InFlight) -> None:
        if self._in_flight.get(entry.delivery.key) is entry:
            del self._in_flight[entry.delivery.key]
            self._room.set()

    # --- delivering -----------------------------------------------------------------------

    async def _run(self, entry: _InFlight, after: asyncio.Task[bool] | None) -> bool:
        """Handles one delivery; True when it was acked (what a later one of its key needs)."""
        try:
            return await self._deliver(entry, after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the message held forever
            self._log.exception(
                "%s: delivering message %s of topic %r failed: %s",
                self._label,
                entry.delivery.message.id,
                entry.delivery.message.topic,
                _reason(exc),
            )
            if not entry.settled:
                await self._release([entry])
            return False
        finally:
            self._ended(entry)

    async def _deliver(self, entry: _InFlight, after: asyncio.Task[bool] | None) -> bool:
        message = entry.delivery.message
        if after is not None:
            await asyncio.wait([after])
            if after.cancelled() or after.exception() is not None or not after.result():
                await self._release([entry])  # the earlier one of its key comes back first
                return False
        route = self._routes.get(message.topic)
        if route is None:
            await self._release([entry])
            return False
        entry.route = route
        limit = self._policy.max_deliveries
        if self._policy.give_up_on_receive and limit and message.delivery_count > limit:
            given_up = await self._give_up(entry, None)
            if given_up is not None:
                return given_up
        error: Exception | None = None
        refused: NotDelivered | None = None
        async with self._slots:
            if self._stopping or route.cancelled:
                await self._release([entry])
                return False
            entry.started = True
            expires_at = entry.delivery.expires_at
            if expires_at is not None and time.time() >= expires_at:
                self._log.info(
                    "%s: message %s on topic %r expired (%s) before delivery; dropped",
                    self._label,
                    message.id,
                    message.topic,
                    TTL_METADATA,
                )
            else:
                try:
                    await route.handler(message)
                except DropMessage as exc:
                    self._log.info(
                        "%s: message %s on topic %r dropped by its handler%s",
                        self._label,
                        message.id,
                        message.topic,
                        f": {exc}" if str(exc) else "",
                    )
                except NotDelivered as exc:
                    refused = exc
                except Exception as exc:
                    error = exc
        if refused is not None:
            self._log.debug(
                "%s: message %s on topic %r given back undelivered: %s",
                self._label,
                message.id,
                message.topic,
                _reason(refused),
            )
            await self._release([entry])
            return False
        if error is None:
            await self._ack(entry)
            return True
        if limit and message.delivery_count >= limit:
            given_up = await self._give_up(entry, error)
            if given_up is not None:
                return given_up
        await self._redeliver(entry, error)
        return False

    async def _give_up(self, entry: _InFlight, error: Exception | None) -> bool | None:
        """Dead-letters or drops a message out of deliveries: True when acked, False when
        retried later (the dead-letter topic failed), None when it is kept (no drop)."""
        message = entry.delivery.message
        assert entry.route is not None
        target = entry.route.dead_letter_topic
        why = f"last error: {error!r}" if error is not None else "its consumers did not ack it"
        if target and target != message.topic:
            try:
                await self._transport.dead_letter(entry.delivery, target)
            except Exception as exc:
                self._log.warning(
                    "%s: could not move message %s of topic %r to dead-letter topic %r: %s; "
                    "it stays unacked and is tried again",
                    self._label,
                    message.id,
                    message.topic,
                    target,
                    _reason(exc),
                )
                await self._retry_later(entry)
                return False
            self._log.warning(
                "%s: message %s on topic %r failed %d deliveries (%s); moved to dead-letter "
                "topic %r",
                self._label,
                message.id,
                message.topic,
                message.delivery_count,
                why,
                target,
            )
            await self._ack(entry)
            return True
        if not self._policy.drop_exhausted:
            return None
        self._log.error(
            "%s: message %s on topic %r failed %d deliveries (%s) and was dropped "
            "(no dead-letter topic)",
            self._label,
            message.id,
            message.topic,
            message.delivery_count,
            why,
        )
        await self._ack(entry)
        return True

    async def _redeliver(self, entry: _InFlight, error: Exception) -> None:
        message = entry.delivery.message
        limit = self._policy.max_deliveries
        delay = self._policy.redelivery_wait(message.delivery_count)
        then = "it stays unacked (redelivery is disabled)" if delay is None else "redelivering"
        self._log.warning(
            "%s: handler failed on message %s of topic %r (delivery %d%s): %r; %s%s",
            self._label,
            message.id,
            message.topic,
            message.delivery_count,
            f" of {limit}" if limit else "",
            error,
            then,
            f" in {delay:.3g}s" if delay is not None else "",
        )
        await self._retry_later(entry)

    # --- settling: each delivery ends in exactly one of these -------------------------------

    async def _retry_later(self, entry: _InFlight) -> None:
        self._settle(entry)
        message = entry.delivery.message
        delay = self._policy.redelivery_wait(message.delivery_count)
        if delay is None:
            return
        try:
            await self._transport.retry_later(entry.delivery, delay)
        except Exception as exc:
            self._log.warning(
                "%s: could not schedule the redelivery of message %s of topic %r: %s; the "
                "broker redelivers it after its own timeout",
                self._label,
                message.id,
                message.topic,
                _reason(exc),
            )

    async def _release(self, entries: Sequence[_InFlight]) -> None:
        for entry in entries:
            self._settle(entry)
        try:
            await self._transport.release([e.delivery for e in entries])
        except Exception as exc:
            self._log.warning(
                "%s: could not give back %d message(s) of %s, e.g. %s: %s; the broker "
                "redelivers them after its own timeout",
                self._label,
                len(entries),
                self._transport.source,
                entries[0].delivery.message.id,
                _reason(exc),
            )

    async def _ack(self, entry: _InFlight) -> None:
        """Queues the ack; one caller at a time sends every queued one in one call."""
        self._settle(entry)
        self._unsent_acks.append(entry.delivery)
        if not self._acking:
            await self._send_acks()

    async def _send_acks(self) -> None:
        self._acking = True
        try:
            while self._unsent_acks:
                batch, self._unsent_acks = self._unsent_acks, []
                try:
                    await self._transport.ack(batch)
                except BulkError as exc:
                    for delivery in batch:
                        if delivery.key in exc.errors:
                            self._ack_failed([delivery], exc.errors[delivery.key])
                except Exception as exc:
                    self._ack_failed(batch, exc)
        finally:
            self._acking = False

    def _ack_failed(self, deliveries: Sequence[Delivery], error: Exception) -> None:
        first = deliveries[0].message
        self._log.warning(
            "%s: could not ack %d message(s) of topic %r, e.g. %s: %s; they will be delivered "
            "again",
            self._label,
            len(deliveries),
            first.topic,
            first.id,
            _reason(error),
        )

    def _settle(self, entry: _InFlight) -> None:
        entry.settled = True
        if entry.ended or entry.task is None or entry.task.done():
            self._forget(entry)

    # --- stopping -------------------------------------------------------------------------

    async def _unroute(self, route: _Route, caller: asyncio.Task[Any] | None) -> None:
        if self._routes.get(route.topic) is route:
            del self._routes[route.topic]
        route.cancelled = True
        if not self._routes:
            await self.stop(caller=caller)
            return
        mine = self._tasks(lambda e: e.started and e.route is route, caller)
        if mine:
            _done, late = await asyncio.wait(mine, timeout=self._policy.stop_grace)
            await stop_tasks(*late)
        await self._wait_for_background()

    async def _finish(self) -> None:
        try:
            left = [e for e in self._in_flight.values() if not e.settled]
            if left:
                await self._release(left)
            await self._wait_for_background()
            if self._unsent_acks and not self._acking:
                await self._send_acks()
            try:
                await self._transport.close()
            except Exception as exc:
                self._log.warning(
                    "%s: could not close %s: %s", self._label, self._transport.source, exc
                )
        finally:
            self._stopped.set()

    def _tasks(
        self, which: Callable[[_InFlight], bool], caller: asyncio.Task[Any] | None
    ) -> list[asyncio.Task[bool]]:
        return [
            e.task
            for e in list(self._in_flight.values())
            if e.task is not None and e.task is not caller and not e.task.done() and which(e)
        ]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _wait_for_background(self) -> None:
        current = asyncio.current_task()
        waiting = [t for t in self._background if t is not current]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)


@dataclass(eq=False)
class _InFlight:
    delivery: Delivery
    task: asyncio.Task[bool] | None = None
    route: _Route | None = None
    started: bool = False
    """Holds a concurrency slot: its handler runs (or ran); stopping lets it finish."""
    settled: bool = False
    """Acked, retried or released: nothing more will be done with it."""
    ended: bool = False
    """Its task has run its last step."""


class _Route(Subscription):
    """One topic's handler on an engine; cancelling the last route stops the engine."""

    def __init__(
        self, engine: DeliveryEngine, topic: str, handler: Handler, dead_letter_topic: str
    ) -> None:
        self.topic = topic
        self.handler = handler
        self.dead_letter_topic = dead_letter_topic
        self.cancelled = False
        self._engine = engine

    @property
    def active(self) -> bool:
        return not self.cancelled and not self._engine.stopping

    async def cancel(self) -> None:
        """Stops handing this topic's messages to the handler; running calls may finish."""
        await self._engine._unroute(self, asyncio.current_task())


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


__all__ = [
    "DeliveryEngine",
    "DeliveryPolicy",
    "DeliverySettings",
    "NotDelivered",
    "SubscriptionEngines",
    "concurrency_setting",
    "dead_letter_topic_setting",
    "max_deliveries_setting",
]

"""Delivery to the app: pub/sub messages to its subscriptions, input-binding events to its routes.

``mechakit run --app-port`` starts a :class:`Delivery` once the app answers on its port. It
gathers the subscriptions the app asks for (HTTP ``GET /dapr/subscribe``, gRPC
``ListTopicSubscriptions``) and the declarative ``kind: Subscription`` resources scoped to the
app id, subscribes each on its pub/sub component, and hands every message to the app as a
CloudEvent 1.0: HTTP ``POST <route>`` with ``application/cloudevents+json``, or gRPC
``OnTopicEvent``. The route is the first v2alpha1 rule whose ``match`` holds for the event
(see :mod:`mechakit.runtime.routing` for the expression subset), else the default route.
How the app is reached is :mod:`mechakit.runtime.app_channels`.

Each delivery carries the message's metadata (what the publisher attached, what the broker
adds, and ``pubsubName``, as daprd adds it): HTTP headers, or a gRPC app's call metadata (see
:mod:`mechakit.runtime.app_channels`).

The app's answer decides, as in Dapr: SUCCESS acks; DROP (HTTP 404 too) raises
:class:`~mechakit.core.pubsub.DropMessage`; RETRY, any other HTTP status and every failure to
reach the app raise :class:`AppRetryError`, so the pub/sub component redelivers with its own
backoff and, once its deliveries are used up, moves the message to the subscription's
``deadLetterTopic``. Nothing is acked before SUCCESS or DROP. Expired events (CloudEvent
``expiration``) are dropped before delivery.

Resiliency: the ``inbound`` policy of the component (:mod:`mechakit.runtime.resiliency`)
wraps each delivery as daprd wraps it (:func:`topic_handler` does it for every pub/sub
subscription: pushed, streamed or bulk): a retry policy repeats the call to the app after a
RETRY (or a failure to reach it, or an input binding's non-2xx) before the message goes back
to the broker; a timeout bounds one call; an open circuit breaker makes no call and the
message goes back to the broker unacknowledged. A DROP is never retried. A batch is retried
with only its entries the app did not take (see :mod:`mechakit.runtime.bulk_subscribe`).

Input bindings: each input binding the app listens to (HTTP: ``OPTIONS /<name>`` is not 404;
gRPC: ``ListInputBindings``) delivers each event as ``POST /<name>`` (or the binding's
``route`` metadata) with the data as body and the metadata as headers, or as gRPC
``OnBindingEvent`` with the metadata in the request (as daprd) and as call metadata (what
the SDK's ``BindingRequest.metadata`` reads); a failed delivery raises into the binding.

Configuration updates (subscriptions made through the HTTP API) go out as Dapr sends them:
``POST /configuration/<store>/<key>`` once per changed key, each carrying the whole update
``{"id", "items": {key: {value, version, metadata}}}`` (gRPC: ``OnInvoke`` with that method).
A failed call is logged, not retried, as in Dapr.

Pausing (``--enable-app-health-check``): :meth:`Delivery.pause` cancels every broker
subscription and input-binding read, as daprd stops them while the app is unhealthy, so the
broker keeps what is published instead of the sidecar holding a prefetch window of unacked
messages; what was in flight goes back to the broker unacknowledged. :meth:`Delivery.resume`
subscribes and reads again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mechakit.core import cloudevents
from mechakit.core.bindings import BindingEvent, InputBinding
from mechakit.core.component import Subscription
from mechakit.core.configuration import ConfigurationUpdate
from mechakit.core.errors import MechakitError
from mechakit.core.pubsub import DropMessage, Handler, Message, PubSub, SubscribeRequest

from . import tracing
from .app_channels import MESSAGE_METADATA, AppAnswer, AppChannel, AppRetryError, AppStatus
from .bulk_subscribe import Batcher, BulkSender, bulk_entry
from .manifest import MetadataItem
from .resiliency import Policy, run_under
from .routing import AppSubscription, RouteSyntaxError, route_path
from .service.metadata import list_delivered

if TYPE_CHECKING:
    from .in_process import Runtime

log = logging.getLogger("mechakit.delivery")

DEFAULT_READY_TIMEOUT = 60.0
"""How long ``start`` waits for the app to listen on its port."""
STOP_TIMEOUT = 5.0
"""How long ``stop`` waits for deliveries in flight, per subscription."""
PUBSUB_NAME_METADATA = "pubsubName"
"""What daprd adds to every message's metadata: the name of the pub/sub it came from."""

EventSender = Callable[[Mapping[str, Any], str, AppSubscription], Awaitable[AppAnswer]]
"""Sends one CloudEvent to ``path`` and returns the app's answer (``AppChannel.send_event``)."""


class Delivery:
    """Subscribes the app's topics and input bindings on a started runtime; ``stop`` undoes it."""

    def __init__(
        self,
        runtime: Runtime,
        channel: AppChannel,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self.runtime = runtime
        self.channel = channel
        self.ready_timeout = ready_timeout
        self.subscriptions: list[AppSubscription] = []
        """What is being delivered, declarative first (what the metadata API lists)."""
        list_delivered(runtime, self.subscriptions)
        self.bindings: dict[str, str] = {}
        """Input binding name -> the route its events are posted to."""
        self._sources: list[_Source] = []
        self._paused = False
        self._switch = asyncio.Lock()
        self._starting: asyncio.Task[None] | None = None
        self._stopped = False
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def paused(self) -> bool:
        return self._paused

    def hold(self) -> None:
        """Start paused: subscriptions and reads are gathered but begin only on ``resume``."""
        self._paused = True

    async def pause(self) -> None:
        """Cancel the broker subscriptions and input-binding reads (each given
        ``STOP_TIMEOUT`` s for its deliveries in flight); ``resume`` redoes them."""
        async with self._switch:
            if self._paused or self._stopped:
                self._paused = True
                return
            self._paused = True
            for source in self._sources:
                await source.stop()
            if self._sources:
                log.info("deliveries paused: %d subscription(s) cancelled", len(self._sources))

    async def resume(self) -> None:
        """Subscribe and read again what ``pause`` cancelled (or ``hold`` kept back)."""
        async with self._switch:
            if not self._paused or self._stopped:
                return
            self._paused = False
            for source in self._sources:
                await source.begin()
            if self._sources:
                log.info("deliveries resumed: %d subscription(s)", len(self._sources))

    def _later(self) -> str:
        return " once resumed (the app is not healthy yet)" if self._paused else ""

    async def _add(self, source: _Source) -> bool:
        """Track ``source`` and start it unless paused; False when its first start failed."""
        async with self._switch:
            if not self._paused and not await source.begin():
                return False
            self._sources.append(source)
            return True

    def start_in_background(self) -> asyncio.Task[None]:
        """``start`` as a task, so the caller can run the app meanwhile; ``stop`` cancels it."""
        self._starting = asyncio.create_task(self._start_logged(), name="mechakit delivery")
        return self._starting

    async def _start_logged(self) -> None:
        try:
            await self.start()
        except TimeoutError as exc:
            log.error("%s: nothing is delivered to the app", exc)
        except Exception:
            log.exception("delivery to the app could not start")

    async def start(self) -> None:
        """Wait for the app, gather subscriptions and input bindings, and start delivering."""
        await self.channel.wait_ready(self.ready_timeout)
        host = self.runtime.host
        declarative: list[AppSubscription] = []
        for manifest in host.subscriptions:
            try:
                declarative.append(AppSubscription.from_manifest(manifest))
            except RouteSyntaxError as exc:
                log.error(
                    "Subscription %r (%s:%d) ignored: %s",
                    manifest.name,
                    manifest.file,
                    manifest.line,
                    exc,
                )
        programmatic = await self.channel.subscriptions()
        seen: dict[tuple[str, str], AppSubscription] = {}
        for subscription in [*declarative, *programmatic]:
            key = (subscription.pubsub_name, subscription.topic)
            if key in seen:
                log.warning(
                    "topic %r on %r is subscribed twice (%s and %s): the first is used",
                    subscription.topic,
                    subscription.pubsub_name,
                    seen[key].origin,
                    subscription.origin,
                )
                continue
            seen[key] = subscription
            if self._stopped:
                return
            await self._subscribe(subscription)
        for hosted in host.components.values():
            if isinstance(hosted.instance, InputBinding) and not self._stopped:
                await self._read_binding(hosted.name, hosted.instance, hosted.manifest.metadata)
        if not self.subscriptions and not self.bindings:
            log.info("the app subscribes to no topic and listens to no input binding")

    async def _subscribe(self, subscription: AppSubscription) -> None:
        try:
            hosted = self.runtime.host.get(subscription.pubsub_name, "pubsub")
        except MechakitError as exc:
            log.warning("%s: not delivered: %s", subscription.describe(), exc)
            return
        pubsub = hosted.instance
        if not isinstance(pubsub, PubSub):
            log.warning(
                "%s: not delivered: %s is not a pub/sub component",
                subscription.describe(),
                hosted.description,
            )
            return
        request = SubscribeRequest(
            topic=subscription.topic,
            metadata=dict(subscription.metadata),
            dead_letter_topic=subscription.dead_letter_topic,
            min_concurrency=subscription.bulk.max_messages if subscription.bulk else 0,
        )

        def subscribe() -> Awaitable[Subscription]:
            return pubsub.subscribe(request, self._topic_handler(pubsub, subscription))

        if not await self._add(_Source(f"{subscription.describe()}: subscribe", subscribe)):
            return
        self.subscriptions.append(subscription)
        log.info("delivering %s%s", subscription.describe(), self._later())

    def _topic_handler(self, pubsub: PubSub[Any], subscription: AppSubscription) -> Handler:
        return topic_handler(
            pubsub.label,
            subscription,
            self.channel.send_event,
            self.channel.send_bulk,
            policy=self.runtime.resiliency.inbound(subscription.pubsub_name),
        )

    async def _read_binding(
        self, name: str, binding: InputBinding[Any], metadata: Iterable[MetadataItem]
    ) -> None:
        settings = _plain_metadata(metadata)
        direction = settings.get("direction", "").lower()
        if direction and "input" not in {d.strip() for d in direction.split(",")}:
            return
        route = route_path(settings.get("route") or name)
        if not await self.channel.listens_to_binding(name, route):
            log.info("input binding %r: the app does not listen on %s; not read", name, route)
            return
        channel = self.channel
        policy = self.runtime.resiliency.inbound(name)

        async def deliver(event: BindingEvent) -> None:
            async def once() -> None:
                try:
                    await channel.send_binding(name, route, event)
                except MechakitError as exc:
                    if exc.retriable or policy is None:
                        raise
                    raise AppRetryError(exc.reason, component=f"binding {name!r}") from exc

            await run_under(policy, once)

        if not await self._add(
            _Source(f"input binding {name!r}: read", lambda: binding.read(deliver))
        ):
            return
        self.bindings[name] = route
        where = f"POST {route}" if channel.protocol == "http" else "OnBindingEvent"
        log.info("delivering input binding %r to the app (%s)%s", name, where, self._later())

    async def send_configuration(self, store: str, update: ConfigurationUpdate) -> None:
        """Hand a configuration update to the app: one call per changed key, failures logged."""
        body = json.dumps(configuration_event(update), separators=(",", ":")).encode()
        self._sending += 1
        self._idle.clear()
        try:
            for key in update.items:
                method = f"/configuration/{quote(store, safe='')}/{quote(key, safe='/')}"
                if self._stopped:
                    log.warning("configuration update of %r not sent: delivery has stopped", key)
                    return
                try:
                    await self.channel.send_configuration(method, body)
                except MechakitError as exc:
                    log.error(
                        "configuration subscription %s: sending %r to the app failed: %s",
                        update.subscription_id,
                        key,
                        exc,
                    )
        finally:
            self._sending -= 1
            if not self._sending:
                self._idle.set()

    async def stop(self) -> None:
        """Stop delivering (deliveries in flight get ``STOP_TIMEOUT`` s each, configuration
        updates being sent ``STOP_TIMEOUT`` s), then close the channel."""
        self._stopped = True
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        async with self._switch:
            while self._sources:
                await self._sources.pop().stop()
        self.subscriptions.clear()
        self.bindings.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_TIMEOUT)
        await self.channel.close()


class _Source:
    """One broker subscription or input-binding read, which ``pause`` may stop and redo."""

    def __init__(self, what: str, start: Callable[[], Awaitable[Subscription]]) -> None:
        self.what = what
        self._start = start
        self._running: Subscription | None = None

    async def begin(self) -> bool:
        """Start it; a failure is logged (and tried again on the next ``resume``)."""
        try:
            self._running = await self._start()
        except Exception as exc:
            log.error("%s failed: %s", self.what, exc)
            return False
        return True

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        try:
            await asyncio.wait_for(running.cancel(), STOP_TIMEOUT)
        except Exception as exc:
            log.warning("%s: did not stop cleanly: %r", self.what, exc)


def topic_handler(
    component: str,
    subscription: AppSubscription,
    send: EventSender,
    send_bulk: BulkSender | None = None,
    *,
    policy: Policy | None = None,
) -> Handler:
    """The handler given to the pub/sub component for ``subscription``: each message as the
    app's CloudEvent, routed, sent with its metadata (in a batch with others when the
    subscription has ``bulkSubscribe`` and ``send_bulk`` is given); the answer acks
    (SUCCESS), raises ``DropMessage`` (DROP) or ``AppRetryError`` (RETRY). ``component``
    names the pub/sub in errors; ``policy`` (its inbound resiliency) wraps each send, of one
    event or of a batch."""
    bulk = subscription.bulk
    batcher = (
        Batcher(bulk, subscription, send_bulk, component=component, policy=policy)
        if bulk and send_bulk
        else None
    )

    async def deliver(message: Message) -> None:
        event = app_event(message, subscription)
        event_id = event.get("id", message.id)
        if cloudevents.is_expired(event):
            raise DropMessage(f"event {event_id} expired at {event.get('expiration')}")
        path = subscription.route(event)
        if path is None:
            raise DropMessage(
                f"event {event_id} matches no routing rule and there is no default route"
            )

        def settled(answer: AppAnswer) -> AppAnswer:
            log.debug("event %s on topic %r: %s", event_id, subscription.topic, answer.detail)
            if answer.status is AppStatus.RETRY:
                raise AppRetryError(
                    f"event {event_id} on topic {subscription.topic!r}: the app asked for a "
                    f"retry ({answer.detail})",
                    component=component,
                    key=str(event_id),
                )
            return answer

        async def once(route: str = path) -> AppAnswer:
            sent = send(event, route, subscription)
            return settled(await tracing.delivery(event, subscription.topic, sent))

        if batcher is not None:
            word, detail = await batcher.submit(bulk_entry(message, event, subscription), path)
            answer = settled(AppAnswer(AppStatus(word), detail))
        else:
            metadata = {**message.metadata, PUBSUB_NAME_METADATA: subscription.pubsub_name}
            token = MESSAGE_METADATA.set(metadata)
            try:
                answer = await run_under(policy, once)
            finally:
                MESSAGE_METADATA.reset(token)
        if answer.status is AppStatus.DROP:
            raise DropMessage(f"the app answered DROP ({answer.detail})")

    return deliver


def app_event(message: Message, subscription: AppSubscription) -> dict[str, Any]:
    """The CloudEvent the app receives for ``message``.

    A message that is not a CloudEvent (raw payload), or any message of a subscription with
    metadata ``rawPayload: true``, is wrapped as Dapr does: ``data_base64``,
    ``application/octet-stream``.
    """
    event = None if subscription.raw_payload else cloudevents.parse_event(message.data)
    if event is None:
        return {
            "id": message.id or str(uuid.uuid4()),
            "specversion": cloudevents.SPEC_VERSION,
            "datacontenttype": "application/octet-stream",
            "source": "",
            "type": cloudevents.EVENT_TYPE,
            "topic": subscription.topic,
            "pubsubname": subscription.pubsub_name,
            "data_base64": base64.b64encode(message.data).decode(),
        }
    event.setdefault("topic", subscription.topic)
    event.setdefault("pubsubname", subscription.pubsub_name)
    return event


def configuration_event(update: ConfigurationUpdate) -> dict[str, Any]:
    """The body Dapr posts to the app for a configuration update (a deleted key: empty value)."""
    return {
        "id": update.subscription_id,
        "items": {
            key: {"value": item.value, "version": item.version, "metadata": dict(item.metadata)}
            for key, item in update.items.items()
        },
    }


def _plain_metadata(items: Iterable[MetadataItem]) -> dict[str, str]:
    """Plain ``value`` metadata by lower-cased name (``route``, ``direction``)."""
    return {item.name.lower(): item.value for item in items if item.value is not None}


__all__ = ["Delivery", "EventSender", "app_event", "configuration_event", "topic_handler"]

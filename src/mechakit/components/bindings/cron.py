"""bindings.cron: an input binding that calls the handler on a schedule.

The schedule is standard cron (5 fields, or 6 with seconds first), a descriptor such as
``@daily``, or ``@every 15s`` (see ``_cron_schedule`` for the full syntax). Each event's data
is ``{"time": "<fire time, RFC 3339>"}``; its metadata, as in Dapr, are ``timeZone`` and
``readTimeUTC``. A handler error is logged and the schedule goes on; fires missed while a
handler was still running are skipped, not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from mechakit.core.bindings import BindingEvent, InputBinding, InputHandler
from mechakit.core.component import Subscription, TaskSubscription
from mechakit.core.errors import MetadataError
from mechakit.core.metadata import Settings, setting

from ._cron_schedule import Schedule, load_zone, parse_schedule


class CronSettings(Settings):
    ignored_metadata = frozenset({"direction", "route"})

    schedule: str = setting(
        description="When to fire: cron fields (5, or 6 with seconds), @daily-style descriptors, or @every <duration>.",
        example="@every 15m",
    )
    time_zone: str = setting(
        "",
        description="IANA zone the cron fields are read in; empty means the machine's local zone.",
        example="Europe/Berlin",
    )


class CronBinding(InputBinding[CronSettings]):
    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        """``clock`` returns the current aware datetime; tests may pass their own."""
        super().__init__()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._schedule: Schedule | None = None
        self._zone: tzinfo = UTC
        self._zone_name = "UTC"

    async def open(self) -> None:
        settings = self.settings
        try:
            schedule = await asyncio.to_thread(parse_schedule, settings.schedule)
        except ValueError as exc:
            raise MetadataError(
                f"metadata 'schedule' is invalid: {exc}", component=self.label, field="schedule"
            ) from None
        try:
            zone = await asyncio.to_thread(
                load_zone if settings.time_zone else _local_zone, settings.time_zone
            )
        except ValueError as exc:
            raise MetadataError(
                f"metadata 'timeZone' is invalid: {exc}", component=self.label, field="timeZone"
            ) from None
        self._zone = schedule.zone or zone
        self._zone_name = str(getattr(self._zone, "key", None) or self._zone)
        if schedule.next_after(self._clock().astimezone(self._zone)) is None:
            raise MetadataError(
                f"metadata 'schedule' is invalid: {settings.schedule!r} never fires "
                "(no date matches its day and month fields)",
                component=self.label,
                field="schedule",
            )
        self._schedule = schedule

    async def read(self, handler: InputHandler) -> Subscription:
        """Fire until the subscription is cancelled or the binding closed."""
        task = self.start_task(
            self._fire_forever(self.opened(self._schedule), handler), name="schedule"
        )
        return TaskSubscription(task)

    def next_fire(self, after: datetime) -> datetime | None:
        """When the schedule fires next after ``after`` (in the binding's zone)."""
        return self.opened(self._schedule).next_after(after.astimezone(self._zone))

    async def _fire_forever(self, schedule: Schedule, handler: InputHandler) -> None:
        previous = self._clock().astimezone(self._zone)
        while True:
            fire = schedule.next_after(previous)
            now = self._clock()
            if fire is not None and fire <= now:
                fire = schedule.next_after(now.astimezone(self._zone))
            if fire is None:
                self.log.warning("%s: schedule has no further fire time; stopping", self.label)
                return
            await asyncio.sleep(max((fire - self._clock()).total_seconds(), 0.0))
            await self._deliver(handler, fire)
            previous = fire

    async def _deliver(self, handler: InputHandler, fire: datetime) -> None:
        event = BindingEvent(
            data=json.dumps({"time": fire.isoformat()}).encode(),
            metadata={
                "timeZone": self._zone_name,
                "readTimeUTC": fire.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            },
        )
        try:
            await handler(event)
        except Exception:
            self.log.exception("%s: handler failed for the %s fire", self.label, fire.isoformat())


def _local_zone(_: str = "") -> tzinfo:
    """The machine's zone with its daylight-saving rules (not just today's offset)."""
    tz_variable = os.environ.get("TZ", "").lstrip(":")
    if tz_variable:
        with contextlib.suppress(ValueError):
            return load_zone(tz_variable)
    try:
        with Path("/etc/localtime").open("rb") as file:
            return ZoneInfo.from_file(file, key="Local")
    except (OSError, ValueError):
        return datetime.now().astimezone().tzinfo or UTC

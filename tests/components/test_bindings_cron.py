"""bindings.cron: schedule parsing and next-fire times (deterministic), and real delivery."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mechakit.components.bindings._cron_schedule import parse_schedule
from mechakit.components.bindings.cron import CronBinding
from mechakit.core.bindings import BindingEvent, InputHandler
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ComponentError, MetadataError

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo | None = None) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=zone or UTC) if moment.tzinfo is None else moment


def fires(schedule: str, start: datetime, count: int = 3) -> list[datetime]:
    parsed = parse_schedule(schedule)
    found: list[datetime] = []
    moment = start
    for _ in range(count):
        following = parsed.next_after(moment)
        assert following is not None
        found.append(following)
        moment = following
    return found


async def started(schedule: str, **properties: str) -> CronBinding:
    binding = CronBinding()
    await binding.init(
        ComponentMetadata("cron", "bindings.cron", {"schedule": schedule, **properties})
    )
    return binding


@pytest.mark.parametrize(
    ("schedule", "start", "expected"),
    [
        ("*/15 * * * * *", "2024-06-07 10:00:07", ["10:00:15", "10:00:30", "10:00:45"]),
        ("* * * * *", "2024-06-07 10:00:00", ["10:01:00", "10:02:00", "10:03:00"]),
        ("5-20/5 10 * * *", "2024-06-07 10:06:00", ["10:10:00", "10:15:00", "10:20:00"]),
        ("0 9,17 * * *", "2024-06-07 10:00:00", ["06-07 17:00", "06-08 09:00", "06-08 17:00"]),
        ("0 9 * * MON-FRI", "2024-06-07 10:00:00", ["06-10 09:00", "06-11 09:00", "06-12 09:00"]),
        ("0 9 * * sat,SUN", "2024-06-07 10:00:00", ["06-08 09:00", "06-09 09:00", "06-15 09:00"]),
        ("0 0 ? * 7", "2024-06-07 10:00:00", ["06-09 00:00", "06-16 00:00", "06-23 00:00"]),
        (
            "0 12 1 JAN,jul *",
            "2024-06-07 10:00:00",
            ["2024-07-01 12:00", "2025-01-01 12:00", "2025-07-01 12:00"],
        ),
        ("0 0 31 * *", "2024-01-31 00:00:00", ["2024-03-31", "2024-05-31", "2024-07-31"]),
        ("0 0 29 2 *", "2024-03-01 00:00:00", ["2028-02-29", "2032-02-29", "2036-02-29"]),
        ("0 0 13 * FRI", "2024-10-05 00:00:00", ["10-11", "10-13", "10-18"]),
        ("0 0 1/10 * *", "2024-06-02 00:00:00", ["06-11", "06-21", "07-01"]),
        ("@hourly", "2024-06-07 10:30:00", ["11:00", "12:00", "13:00"]),
        ("@daily", "2024-06-07 10:30:00", ["06-08", "06-09", "06-10"]),
        ("@midnight", "2024-06-07 10:30:00", ["06-08", "06-09", "06-10"]),
        ("@weekly", "2024-06-07 10:30:00", ["06-09", "06-16", "06-23"]),
        ("@monthly", "2024-06-07 10:30:00", ["07-01", "08-01", "09-01"]),
        ("@yearly", "2024-06-07 10:30:00", ["2025-01-01", "2026-01-01", "2027-01-01"]),
        ("@annually", "2024-06-07 10:30:00", ["2025-01-01", "2026-01-01", "2027-01-01"]),
        ("@every 15s", "2024-06-07 10:00:00.5", ["10:00:15.5", "10:00:30.5", "10:00:45.5"]),
        ("@every 1m30s", "2024-06-07 10:00:00", ["10:01:30", "10:03:00", "10:04:30"]),
    ],
)
def test_next_fire_times(schedule: str, start: str, expected: list[str]) -> None:
    begin = at(start)
    got = fires(schedule, begin)
    assert [_complete(text, begin) for text in expected] == got


def _complete(text: str, begin: datetime) -> datetime:
    """Fills the parts an expected time leaves out (date, year, time) from ``begin``."""
    if text.count(":") and "-" not in text:
        day = begin.strftime("%Y-%m-%d")
        return at(f"{day} {text}" if text.count(":") == 2 else f"{day} {text}:00")
    if text.count("-") == 1:
        text = f"{begin.year}-{text}"
    return at(text)


def test_cron_fields_are_read_on_the_wall_clock_of_the_schedule_zone() -> None:
    start = at("2024-06-07 00:00:00")
    (fire,) = fires("CRON_TZ=America/New_York 0 9 * * *", start, 1)
    assert fire == at("2024-06-07 13:00:00")
    assert fire.utcoffset() == timedelta(hours=-4)


def test_a_wall_time_skipped_by_daylight_saving_fires_after_the_jump() -> None:
    (fire,) = fires("30 2 * * *", at("2024-03-31 00:00:00", BERLIN), 1)
    assert fire.isoformat() == "2024-03-31T03:30:00+02:00"


def test_a_wall_time_that_occurs_twice_fires_once() -> None:
    got = fires("30 2 * * *", at("2024-10-27 00:00:00", BERLIN), 2)
    assert [f.isoformat() for f in got] == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]


def test_next_fire_from_inside_a_repeated_hour_is_not_in_the_past() -> None:
    second_pass = datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN, fold=1)
    (fire,) = fires("45 2 * * *", second_pass, 1)
    assert fire.astimezone(UTC) == at("2024-10-27 01:45:00")


def test_an_impossible_date_never_fires() -> None:
    assert parse_schedule("0 0 30 2 *").next_after(at("2024-01-01 00:00:00")) is None


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ("", "the schedule is empty"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "expected 5 fields"),
        ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
        ("* 24 * * *", "hour field '24'"),
        ("* * 0 * *", "day-of-month field '0'"),
        ("* * * 13 *", "month field '13'"),
        ("* * * * 8", "day-of-week field '8'"),
        ("* * * * FUNDAY", "'FUNDAY' is not a value"),
        ("*/0 * * * *", "step must be a positive whole number"),
        ("10-5 * * * *", "range starts after it ends"),
        ("? * * * *", "'?' is allowed only in the day fields"),
        ("@fortnightly", "unknown descriptor"),
        ("@daily 5", "unknown descriptor"),
        ("@every", "@every needs a positive duration"),
        ("@every 0s", "@every needs a positive duration"),
        ("@every soon", "not a duration"),
        ("CRON_TZ=Mars/Olympus * * * * *", "unknown time zone 'Mars/Olympus'"),
        ("0 0 30 2 *", "never fires"),
    ],
)
async def test_invalid_schedule_fails_init_naming_schedule_and_why(schedule: str, why: str) -> None:
    with pytest.raises(MetadataError, match="'schedule'") as caught:
        await started(schedule)
    assert why in str(caught.value)
    assert caught.value.field == "schedule"


async def test_schedule_setting_is_required() -> None:
    with pytest.raises(MetadataError, match="'schedule' is required"):
        await CronBinding().init(ComponentMetadata("cron", "bindings.cron"))


async def test_unknown_time_zone_fails_init_naming_time_zone() -> None:
    with pytest.raises(MetadataError, match="'timeZone'.*'Nowhere/City'") as caught:
        await started("@daily", timeZone="Nowhere/City")
    assert caught.value.field == "timeZone"


async def test_time_zone_setting_sets_the_wall_clock() -> None:
    binding = await started("0 9 * * *", timeZone="Asia/Tokyo")
    fire = binding.next_fire(at("2024-06-07 00:00:00"))
    assert fire == at("2024-06-08 00:00:00")


async def test_a_fire_event_carries_its_time_and_dapr_metadata() -> None:
    binding = await started("@every 1s", timeZone="Europe/Berlin")
    events: asyncio.Queue[BindingEvent] = asyncio.Queue()

    async def handler(event: BindingEvent) -> None:
        await events.put(event)

    subscription = await binding.read(handler)
    try:
        event = await asyncio.wait_for(events.get(), timeout=5)
    finally:
        await binding.close()
    assert not subscription.active
    fired = datetime.fromisoformat(json.loads(event.data)["time"])
    assert fired.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert event.metadata["timeZone"] == "Europe/Berlin"
    assert datetime.fromisoformat(event.metadata["readTimeUTC"]) == fired
    assert abs(datetime.now(UTC) - fired) < timedelta(seconds=5)


async def test_a_handler_error_is_logged_and_the_schedule_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    binding = await started("@every 100ms")
    calls = 0
    second = asyncio.Event()

    async def handler(event: BindingEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler broke")
        second.set()

    with caplog.at_level(logging.ERROR, logger="mechakit.bindings.cron"):
        subscription = await binding.read(handler)
        try:
            await asyncio.wait_for(second.wait(), timeout=5)
        finally:
            await subscription.cancel()
    assert "handler failed" in caplog.text and "handler broke" in caplog.text


async def test_cancel_stops_one_reader_and_close_stops_the_rest() -> None:
    binding = await started("@every 50ms")
    counts = {"a": 0, "b": 0}

    def counter(name: str) -> InputHandler:
        async def handler(event: BindingEvent) -> None:
            counts[name] += 1

        return handler

    first = await binding.read(counter("a"))
    second = await binding.read(counter("b"))
    await first.cancel()
    assert not first.active and second.active
    await binding.close()
    assert not second.active
    await binding.close()


async def test_read_needs_an_initialised_open_binding() -> None:
    async def handler(event: BindingEvent) -> None:
        return None

    with pytest.raises(ComponentError, match="init"):
        await CronBinding().read(handler)
    binding = await started("@daily")
    await binding.close()
    with pytest.raises(ComponentError, match="init"):
        await binding.read(handler)

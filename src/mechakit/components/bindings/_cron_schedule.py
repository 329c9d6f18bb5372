"""Cron schedules as Dapr's cron binding accepts them (robfig/cron with optional seconds).

Accepted forms:

- five fields ``minute hour day-of-month month day-of-week`` (fires at second 0);
- six fields, seconds first (``*/15 * * * * *``);
- descriptors ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``), ``@hourly``, and ``@every <duration>`` (``@every 1m30s``; Go duration
  syntax, measured from the previous fire, so it does not drift);
- an optional ``CRON_TZ=<zone> `` (or ``TZ=<zone> ``) prefix that overrides the zone.

Each field takes ``*``, a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``
(``a`` to the field's maximum), and comma lists of these. Months and weekdays also take
names (``JAN``, ``MON-FRI``, case-insensitive); weekday 7 is Sunday, like 0. ``?`` means
``*`` in the day fields. As in Vixie cron, when both day fields are restricted a day
matching either one fires; when either starts with ``*`` or ``?`` both must match.

Times are matched on the wall clock of the zone. A wall time skipped by a daylight-saving
jump fires at the same offset after the jump (02:30 → 03:30); a wall time that occurs
twice fires once, at its first occurrence.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mechakit.core.metadata import parse_duration

_SEARCH_YEARS = 9
"""Horizon of a search: every satisfiable schedule fires within 8 years (29 February)."""

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}


class Schedule(ABC):
    """When a schedule fires next; ``zone`` is the zone given in the text, if any."""

    zone: tzinfo | None = None

    @abstractmethod
    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment`` (timezone-aware), or None if never."""


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """``@every <duration>``: fires each ``every`` after the previous fire."""

    every: timedelta
    zone: tzinfo | None = None

    def next_after(self, moment: datetime) -> datetime | None:
        return moment + self.every


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTH_NAMES)
_DAY_OF_WEEK = _Field("day-of-week", 0, 7, _DAY_NAMES)


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """A field schedule; weekdays are stored 0 (Sunday) to 6."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    any_day_of_month: bool
    any_day_of_week: bool
    zone: tzinfo | None = None

    def next_after(self, moment: datetime) -> datetime | None:
        if moment.tzinfo is None:
            raise ValueError("next_after needs a timezone-aware datetime")
        zone = self.zone or moment.tzinfo
        moment_utc = moment.astimezone(UTC)
        wall = moment.astimezone(zone).replace(tzinfo=None, microsecond=0) + timedelta(seconds=1)
        horizon = wall.replace(year=wall.year + _SEARCH_YEARS, month=1, day=1)
        while wall < horizon:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self._day_matches(wall.date()):
                wall = datetime.combine(wall.date() + timedelta(days=1), datetime.min.time())
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0, second=0) + timedelta(hours=1)
            elif wall.minute not in self.minutes:
                wall = wall.replace(second=0) + timedelta(minutes=1)
            elif wall.second not in self.seconds:
                wall += timedelta(seconds=1)
            else:
                for fold in (0, 1):
                    candidate = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
                    if candidate > moment_utc:
                        return candidate.astimezone(zone)
                wall += timedelta(seconds=1)
        return None

    def _day_matches(self, day: date) -> bool:
        in_month = day.day in self.days_of_month
        in_week = (day.isoweekday() % 7) in self.days_of_week
        if self.any_day_of_month or self.any_day_of_week:
            return in_month and in_week
        return in_month or in_week


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; ``ValueError`` says what is wrong and where."""
    spec = text.strip()
    zone: tzinfo | None = None
    prefix = re.match(r"(?:CRON_TZ|TZ)=(\S+)\s+", spec)
    if prefix:
        zone = load_zone(prefix.group(1))
        spec = spec[prefix.end() :]
    if not spec:
        raise ValueError("the schedule is empty")
    if spec.startswith("@"):
        word, _, rest = spec.partition(" ")
        if word.lower() == "@every":
            every = parse_duration(rest.strip()) if rest.strip() else None
            if every is None or every <= timedelta(0):
                raise ValueError(
                    f"@every needs a positive duration such as 15s or 1m30s, got {rest.strip()!r}"
                )
            return IntervalSchedule(every, zone)
        expansion = _DESCRIPTORS.get(word.lower())
        if expansion is None or rest.strip():
            known = ", ".join([*_DESCRIPTORS, "@every <duration>"])
            raise ValueError(f"unknown descriptor {spec!r} (known: {known})")
        spec = expansion
    fields = spec.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, got {len(fields)}"
        )
    days_of_week = _parse_field(fields[5], _DAY_OF_WEEK)
    return CronSchedule(
        seconds=_parse_field(fields[0], _SECOND),
        minutes=_parse_field(fields[1], _MINUTE),
        hours=_parse_field(fields[2], _HOUR),
        days_of_month=_parse_field(fields[3], _DAY_OF_MONTH),
        months=_parse_field(fields[4], _MONTH),
        days_of_week=frozenset(d % 7 for d in days_of_week),
        any_day_of_month=fields[3][0] in "*?",
        any_day_of_week=fields[5][0] in "*?",
        zone=zone,
    )


def load_zone(name: str) -> tzinfo:
    """An IANA zone by name; ``ValueError`` when the name is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin or UTC)"
        ) from None


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, field))
    return frozenset(values)


def _parse_item(item: str, field: _Field) -> range:
    where = f"{field.name} field {item!r}"
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"{where}: the step must be a positive whole number")
        step = int(step_text)
    if base in ("*", "?"):
        if base == "?" and field not in (_DAY_OF_MONTH, _DAY_OF_WEEK):
            raise ValueError(f"{where}: '?' is allowed only in the day fields")
        low, high = field.low, _step_high(field)
    elif "-" in base:
        start, _, end = base.partition("-")
        low, high = _value(start, field, where), _value(end, field, where)
        if low > high:
            raise ValueError(f"{where}: the range starts after it ends")
    else:
        low = _value(base, field, where)
        high = _step_high(field) if slash else low
    return range(low, high + 1, step)


def _value(text: str, field: _Field, where: str) -> int:
    if field.names and text.upper() in field.names:
        return field.names[text.upper()]
    if not text.isdigit():
        allowed = f"{field.low}-{field.high}"
        if field.names:
            allowed += " or " + "-".join((next(iter(field.names)), list(field.names)[-1]))
        raise ValueError(f"{where}: {text!r} is not a value ({allowed})")
    value = int(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"{where}: {value} is out of range {field.low}-{field.high}")
    return value


def _step_high(field: _Field) -> int:
    """The top of ``*`` and ``a/n``: weekday 7 is only an alias of Sunday, never stepped to."""
    return 6 if field is _DAY_OF_WEEK else field.high


def _first_of_next_month(wall: datetime) -> datetime:
    if wall.month == 12:
        return datetime(wall.year + 1, 1, 1)
    return datetime(wall.year, wall.month + 1, 1)

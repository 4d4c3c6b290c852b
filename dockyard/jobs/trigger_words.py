"""A definition's triggers and a run's "fired by", told in words for the job pages and the
command line ("every weekday at 06:00 Europe/Berlin", "after #7 succeeds"). Pure: no
Flask, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: cron's day numbers (0 and 7 are both Sunday) and names.
DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
DAY_NUMBERS = {name[:3].upper(): number for number, name in enumerate(DAY_NAMES)}
#: The shorthands croniter knows, as the five fields they stand for.
CRON_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                "@hourly": "0 * * * *"}
OUTCOME_WORDS = {"succeeded": "succeeds", "failed": "fails",
                 "finished": "finishes (whatever the outcome)"}


def in_zone(moment: datetime, timezone: str | None) -> datetime:
    """The moment on the clocks of ``timezone`` (UTC when it is unknown)."""
    try:
        zone: Any = ZoneInfo(timezone) if timezone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    return moment.astimezone(zone)


def parse_instant(text: str | None) -> datetime | None:
    """An ISO time from a trigger record, in UTC (None when it is not one)."""
    try:
        moment = datetime.fromisoformat(text or "")
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def describe_schedule(schedule: dict[str, Any]) -> str:
    """"every weekday at 06:00 Europe/Berlin"; an expression without simple words is
    quoted as it is."""
    cron = str(schedule.get("cron") or "").strip()
    zone = schedule.get("timezone") or "UTC"
    fields = CRON_ALIASES.get(cron.lower(), cron).split()
    words = _cron_words(fields) if len(fields) == 5 else None
    if words is None:
        return f"on the cron schedule '{cron}' ({zone})"
    when, timed = words
    return f"{when} {zone}" if timed else when


def _cron_words(fields: list[str]) -> tuple[str, bool] | None:
    """The five fields in words, and whether the words name a time of day (so the zone
    belongs after them); None for what needs the expression itself."""
    minute, hour, day, month, weekday = fields
    if month != "*":
        return None
    if hour == "*" and day == "*" and weekday == "*":
        if minute == "*":
            return "every minute", False
        if minute.startswith("*/") and minute[2:].isdigit():
            return f"every {int(minute[2:])} minutes", False
        if minute.isdigit():
            return f"every hour at :{int(minute):02d}", False
        return None
    if not minute.isdigit():
        return None
    if hour.startswith("*/") and hour[2:].isdigit() and day == "*" and weekday == "*":
        return f"every {int(hour[2:])} hours at :{int(minute):02d}", False
    hours = hour.split(",")
    if not all(h.isdigit() for h in hours):
        return None
    at = " and ".join(f"{int(h):02d}:{int(minute):02d}" for h in hours)
    if day == "*":
        days = _weekday_words(weekday)
        return (f"{days} at {at}", True) if days else None
    if weekday == "*" and day.isdigit():
        return f"on day {int(day)} of every month at {at}", True
    return None


def _weekday_words(weekday: str) -> str | None:
    text = weekday.upper()
    if text == "*":
        return "every day"
    if text in ("MON-FRI", "1-5"):
        return "every weekday"
    numbers: list[int] = []
    for part in text.split(","):
        number = DAY_NUMBERS.get(part, int(part) if part.isdigit() else None)
        if number is None or number > 7:
            return None
        numbers.append(number % 7)
    if sorted(set(numbers)) == [0, 6]:
        return "every Saturday and Sunday"
    names = [DAY_NAMES[n] for n in dict.fromkeys(numbers)]
    return "every " + (" and ".join(names) if len(names) <= 2
                       else ", ".join(names[:-1]) + " and " + names[-1])


def describe_after(after: dict[str, Any], name: str | None = None) -> str:
    """"after #7 succeeds", with the upstream definition's name when it is known."""
    upstream = f"#{after.get('definition_id')}" + (f" {name}" if name else "")
    outcome = OUTCOME_WORDS.get(str(after.get("on") or "succeeded"), str(after.get("on")))
    return f"after {upstream} {outcome}"


def partition_words(partition: dict[str, Any] | None) -> str:
    """"date matches 2024-*": a value with a wildcard is a pattern, else an exact value."""
    said = []
    for key, value in (partition or {}).items():
        text = str(value)
        said.append(f"{key} matches {text}" if any(c in text for c in "*?[") else
                    f"{key} is {text}")
    return " and ".join(said)


def describe_on_batch(on_batch: dict[str, Any]) -> str:
    """"on each new batch of sales/orders where date matches *"."""
    table = f"{on_batch.get('namespace')}/{on_batch.get('table')}"
    where = partition_words(on_batch.get("partition"))
    return f"on each new batch of {table}" + (f" where {where}" if where else "")


def describe_triggers(definition: Any, upstream_name: str | None = None) -> list[str]:
    """Every trigger of a definition, one sentence each; [] for one launched by hand only."""
    said = []
    if definition.schedule:
        said.append(describe_schedule(definition.schedule))
    if definition.after:
        said.append(describe_after(definition.after, upstream_name))
    if definition.on_batch:
        said.append(describe_on_batch(definition.on_batch))
    return said

"""A job definition's schedule: checking it, and its fire times in UTC.

A schedule is ``{"cron", "timezone", "concurrency", "missed"}``; the cron is read in the
schedule's time zone, and every time Dockyard keeps or compares is in UTC. Pure functions:
no database, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from dockyard.jobs.schemas import FieldProblem

DEFAULT_TIMEZONE = "UTC"
CONCURRENCY = ("allow", "forbid", "replace")
MISSED = ("skip", "run_once")
SCHEDULE_KEYS = frozenset({"cron", "timezone", "concurrency", "missed"})
#: The cron shorthands that name a repeating time (not "@reboot": Dockyard has no boot).
CRON_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily",
                          "@midnight", "@hourly"})
# The minimum-gap check looks at this many fire times or this span, whichever ends first:
# enough to see every gap of a daily or weekly pattern without walking a busy cron for long.
_GAP_SAMPLE_TIMES = 1500
_GAP_SAMPLE_SPAN = timedelta(days=8)
# A fixed start for the gap check, so that a schedule is accepted or refused the same way
# whenever it is saved (a Monday in a year without DST surprises in UTC).
_GAP_SAMPLE_START = datetime(2024, 1, 1)
# A cron that has not fired after this many candidate times never will (e.g. 30 February).
_MAX_CANDIDATES = 100_000


def with_defaults(schedule: dict[str, Any]) -> dict[str, Any]:
    """The schedule with its unset policies filled in (UTC, allow, skip)."""
    return {
        "cron": schedule.get("cron"),
        "timezone": schedule.get("timezone") or DEFAULT_TIMEZONE,
        "concurrency": schedule.get("concurrency") or "allow",
        "missed": schedule.get("missed") or "skip",
    }


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def _cron_problem(cron: Any) -> str | None:
    if not isinstance(cron, str) or not cron.strip():
        return "give a cron expression, e.g. '0 6 * * MON-FRI' (minute hour day month weekday)"
    text = cron.strip()
    if text.startswith("@"):
        if text.lower() not in CRON_ALIASES:
            return f"'{text[:40]}' is not a cron shorthand; use one of " + \
                ", ".join(sorted(CRON_ALIASES))
        return None
    if len(text.split()) != 5:
        return ("use the five cron fields: minute hour day-of-month month day-of-week "
                "(Dockyard schedules no finer than a minute)")
    if not croniter.is_valid(text):
        return f"'{text[:80]}' is not a valid cron expression"
    return None


def check_schedule(schedule: dict[str, Any], min_seconds: int) -> list[FieldProblem]:
    """What is wrong with ``schedule`` (fields ``schedule.cron``, ``schedule.timezone``,
    ``schedule.concurrency``, ``schedule.missed``, ``schedule``); [] when it is fine."""
    if not isinstance(schedule, dict):
        return [FieldProblem("schedule", "give an object with cron, timezone, concurrency "
                             "and missed")]
    problems: list[FieldProblem] = []
    unknown = sorted(set(schedule) - SCHEDULE_KEYS)
    if unknown:
        problems.append(FieldProblem("schedule", "unknown keys: " + ", ".join(unknown[:10])
                                     + "; a schedule has cron, timezone, concurrency, missed"))
    cron_problem = _cron_problem(schedule.get("cron"))
    if cron_problem:
        problems.append(FieldProblem("schedule.cron", cron_problem))
    zone_name = schedule.get("timezone") or DEFAULT_TIMEZONE
    if not isinstance(zone_name, str) or _zone(zone_name) is None:
        problems.append(FieldProblem("schedule.timezone", f"'{str(zone_name)[:80]}' is not a "
                                     "time zone; give an IANA name such as Europe/Berlin or "
                                     "UTC"))
    concurrency = schedule.get("concurrency") or "allow"
    if concurrency not in CONCURRENCY:
        problems.append(FieldProblem("schedule.concurrency", "allow, forbid or replace"))
    missed = schedule.get("missed") or "skip"
    if missed not in MISSED:
        problems.append(FieldProblem("schedule.missed", "skip or run_once"))
    if cron_problem is None:
        gap = _smallest_gap(schedule["cron"].strip())
        if gap is None:
            problems.append(FieldProblem("schedule.cron", "this cron never fires (no such "
                                         "date)"))
        elif gap < min_seconds:
            problems.append(FieldProblem(
                "schedule.cron", f"fires {_spell_seconds(gap)} apart at times; schedules "
                f"may fire at most every {_spell_seconds(min_seconds)} "
                "(DOCKYARD_SCHEDULE_MIN_SECONDS)"))
    return problems


def _spell_seconds(seconds: float) -> str:
    whole = int(seconds)
    if whole % 3600 == 0 and whole >= 3600:
        return f"{whole // 3600} h"
    if whole % 60 == 0 and whole >= 60:
        return f"{whole // 60} min"
    return f"{whole} s"


def _smallest_gap(cron: str) -> float | None:
    """The shortest wall-clock time between two fire times of ``cron`` (None: it never
    fires). Wall-clock, not UTC: a DST change does not make a schedule too frequent."""
    times = croniter(cron, _GAP_SAMPLE_START)
    smallest = float("inf")
    try:
        previous = times.get_next(datetime)
        for _ in range(_GAP_SAMPLE_TIMES):
            current = times.get_next(datetime)
            smallest = min(smallest, (current - previous).total_seconds())
            if current - _GAP_SAMPLE_START > _GAP_SAMPLE_SPAN:
                break
            previous = current
    except (CroniterBadDateError, CroniterError):
        return None
    return smallest


def _first_valid_instant(naive: datetime, zone: ZoneInfo) -> datetime:
    """``naive`` as a UTC instant in ``zone``: the earlier one of a repeated wall time, the
    moment the clocks jumped for a wall time skipped by a DST change."""
    early = naive.replace(tzinfo=zone, fold=0)
    late = naive.replace(tzinfo=zone, fold=1)
    offset_before = early.utcoffset() or timedelta(0)
    if offset_before >= (late.utcoffset() or timedelta(0)):
        # The wall time exists (once, or twice and fold=0 is the first).
        return early.astimezone(UTC)
    # Skipped: with fold=0 the time is read with the offset before the jump, with fold=1
    # with the one after; the jump lies between the two readings. Find it to the second.
    low = late.astimezone(UTC)
    high = early.astimezone(UTC)
    while (high - low) > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset_before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def _instants(schedule: dict[str, Any], after: datetime) -> Iterator[datetime]:
    """The schedule's fire times strictly after ``after``, in UTC, each at most once."""
    if after.tzinfo is None:
        raise ValueError("a naive datetime given as 'after'; give one in UTC")
    filled = with_defaults(schedule)
    zone = _zone(filled["timezone"])
    if zone is None:
        raise ValueError(f"unknown time zone {filled['timezone']!r}")
    # Iterate wall-clock times in the zone (what the cron means), then place each on the
    # UTC line; a wall time repeated by a DST change comes once from the iterator, and any
    # instant not after the previous one (a skipped hour's times all map to its end) is
    # dropped, so every instant fires once.
    start = after.astimezone(zone).replace(tzinfo=None)
    times = croniter(filled["cron"].strip(), start)
    previous = after
    for _ in range(_MAX_CANDIDATES):
        try:
            naive = times.get_next(datetime)
        except (CroniterBadDateError, CroniterError):
            return
        instant = _first_valid_instant(naive, zone)
        if instant > previous:
            previous = instant
            yield instant


def fire_times(schedule: dict[str, Any], after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times of ``schedule`` strictly after ``after``, in UTC."""
    found: list[datetime] = []
    if count <= 0:
        return found
    for instant in _instants(schedule, after):
        found.append(instant)
        if len(found) >= count:
            break
    return found


def next_fire_time(schedule: dict[str, Any], after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (UTC); None if the cron never fires."""
    times = fire_times(schedule, after, 1)
    return times[0] if times else None

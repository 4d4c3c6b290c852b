"""Schedules: cron fire times in a time zone, across DST changes, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from dockyard.jobs.schedules import check_schedule, fire_times, next_fire_time

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_next_five_weekday_mornings_in_utc() -> None:
    schedule = {"cron": "0 6 * * MON-FRI"}
    # Friday 2024-01-05 07:00 UTC: the next five are Mon..Fri of the following week.
    times = fire_times(schedule, utc(2024, 1, 5, 7, 0), 5)
    assert times == [utc(2024, 1, d, 6, 0) for d in (8, 9, 10, 11, 12)]
    assert all(t.tzinfo is not None and t.utcoffset().total_seconds() == 0 for t in times)


def test_times_are_strictly_after() -> None:
    schedule = {"cron": "0 * * * *"}
    assert fire_times(schedule, utc(2024, 1, 1, 10, 0), 2) == [utc(2024, 1, 1, 11, 0),
                                                               utc(2024, 1, 1, 12, 0)]
    assert next_fire_time(schedule, utc(2024, 1, 1, 10, 0, 1)) == utc(2024, 1, 1, 11, 0)


def test_cron_is_read_in_the_schedules_time_zone() -> None:
    winter = fire_times({"cron": "0 6 * * *", "timezone": "Europe/Berlin"},
                        utc(2024, 1, 10), 1)
    summer = fire_times({"cron": "0 6 * * *", "timezone": "Europe/Berlin"},
                        utc(2024, 7, 10), 1)
    tokyo = fire_times({"cron": "0 6 * * *", "timezone": "Asia/Tokyo"}, utc(2024, 1, 10), 1)
    assert winter == [utc(2024, 1, 10, 5, 0)]
    assert summer == [utc(2024, 7, 10, 4, 0)]
    assert tokyo == [utc(2024, 1, 10, 21, 0)]


def test_time_skipped_by_dst_fires_once_at_the_first_valid_instant() -> None:
    # 2024-03-31, Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    times = fire_times({"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
                       utc(2024, 3, 30, 12, 0), 2)
    local = [t.astimezone(BERLIN) for t in times]
    assert [(t.day, t.hour, t.minute) for t in local] == [(31, 3, 0), (1, 2, 30)]
    assert times[0] == utc(2024, 3, 31, 1, 0)


def test_every_instant_fires_once_through_a_skipped_hour() -> None:
    times = fire_times({"cron": "*/20 * * * *", "timezone": "Europe/Berlin"},
                       utc(2024, 3, 31, 0, 30), 5)
    assert times == [utc(2024, 3, 31, 0, 40), utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 20),
                     utc(2024, 3, 31, 1, 40), utc(2024, 3, 31, 2, 0)]


def test_time_repeated_by_dst_fires_once() -> None:
    # 2024-10-27, Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    times = fire_times({"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
                       utc(2024, 10, 26, 12, 0), 2)
    assert times == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_start_inside_the_repeated_hour_does_not_fire_it_again() -> None:
    # 01:10 UTC is 02:10 CET, the second pass; 02:30 has fired in the first pass already.
    times = fire_times({"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
                       utc(2024, 10, 27, 1, 10), 1)
    assert times == [utc(2024, 10, 28, 1, 30)]


def test_every_minute_is_allowed_with_a_minimum_of_60_seconds() -> None:
    assert check_schedule({"cron": "* * * * *"}, 60) == []
    times = fire_times({"cron": "* * * * *"}, utc(2024, 1, 1), 3)
    assert times == [utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 2), utc(2024, 1, 1, 0, 3)]


@pytest.mark.parametrize("cron", ["*/5 * * * * *", "* * * * * *", "0 0 * * * * 2030"])
def test_second_fields_are_refused(cron: str) -> None:
    problems = check_schedule({"cron": cron}, 60)
    assert [p.field for p in problems] == ["schedule.cron"]


@pytest.mark.parametrize("cron,minimum", [("*/5 * * * *", 600), ("0,1 0 * * *", 120),
                                          ("* * * * *", 61)])
def test_too_frequent_is_refused(cron: str, minimum: int) -> None:
    problems = check_schedule({"cron": cron}, minimum)
    assert [p.field for p in problems] == ["schedule.cron"]
    assert "DOCKYARD_SCHEDULE_MIN_SECONDS" in problems[0].message


@pytest.mark.parametrize("cron", ["61 * * * *", "banana", "", "@reboot", "0 0 30 2 *"])
def test_invalid_cron(cron: str) -> None:
    problems = check_schedule({"cron": cron}, 60)
    assert [p.field for p in problems] == ["schedule.cron"]


def test_shorthand_is_allowed() -> None:
    assert check_schedule({"cron": "@daily", "timezone": "Europe/Berlin"}, 60) == []


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", ""])
def test_invalid_time_zone(zone: str) -> None:
    problems = check_schedule({"cron": "0 6 * * *", "timezone": zone}, 60)
    if zone == "":
        assert problems == []  # unset: UTC
    else:
        assert [p.field for p in problems] == ["schedule.timezone"]


def test_policies_and_unknown_keys() -> None:
    problems = check_schedule({"cron": "0 6 * * *", "concurrency": "maybe", "missed": "all",
                               "every": 5}, 60)
    assert sorted(p.field for p in problems) == ["schedule", "schedule.concurrency",
                                                 "schedule.missed"]
    assert check_schedule({"cron": "0 6 * * *", "timezone": "UTC", "concurrency": "forbid",
                           "missed": "run_once"}, 60) == []

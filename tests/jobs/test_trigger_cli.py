"""`dockyard jobs definitions …` against a real web app on a loopback port: create a
definition with each kind of trigger (and a notebook one from a local file), list and show
them with their triggers in words and next fire times, pause and resume, start a
backfill; what Dockyard refuses is told as ``field: message`` lines with exit code 2 and
nothing saved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.settings import Settings
from tests.conftest import web_app
from tests.data.conftest import served
from tests.data.helpers import write_batch_files
from tests.jobs.test_notebook_cli import IMAGE, Dockyard, add_job_images, write_notebook


class TriggerDockyard(Dockyard):
    def definitions(self) -> list[dict[str, Any]]:
        return self.get("/definitions")["definitions"]

    def created_id(self, result: Any) -> int:
        assert result.returncode == 0, result.stderr
        first = result.stdout.splitlines()[0]
        assert first.startswith("Definition "), result.stdout
        return int(first.split()[1])

    def orders(self, *days: str) -> None:
        """alice's sales/orders, partitioned by date, one committed batch per day."""
        base = f"{self.url}/api/v1/tables/sales/orders"
        self.api.put(base, json={"partition_keys": ["date"]}, timeout=30).raise_for_status()
        for day in days:
            began = self.api.post(f"{base}/batches", json={"partition": {"date": day}},
                                  timeout=30)
            began.raise_for_status()
            write_batch_files(began.json()["location"], {"x": [1]})
            self.api.post(f"{base}/batches/{began.json()['batch_id']}/commit", json={},
                          timeout=30).raise_for_status()


@pytest.fixture
def dockyard(migrated: Settings, tmp_path: Path) -> Iterator[TriggerDockyard]:
    add_job_images(migrated)
    with served(web_app(migrated)) as url:
        yield TriggerDockyard(url, tmp_path)


def test_a_scheduled_definition_is_created_listed_shown_paused_and_resumed(
    dockyard: TriggerDockyard,
) -> None:
    created = dockyard.cli("definitions", "create", "weekday-report", "--image", IMAGE,
                           "--command", "python report.py", "--cron", "0 6 * * MON-FRI",
                           "--timezone", "Europe/Berlin", "--concurrency", "forbid",
                           "--missed", "run_once")
    definition_id = dockyard.created_id(created)
    lines = created.stdout.splitlines()
    assert lines[0] == f"Definition {definition_id} weekday-report created."
    assert lines[1] == "  runs every weekday at 06:00 Europe/Berlin"
    assert lines[2].startswith("  first run at ") and lines[-1].endswith(
        f"/jobs/definitions/{definition_id}")
    saved = dockyard.get(f"/definitions/{definition_id}")
    assert saved["schedule"] == {"cron": "0 6 * * MON-FRI", "timezone": "Europe/Berlin",
                                 "concurrency": "forbid", "missed": "run_once"}
    assert saved["command"] == "python report.py"

    listed = dockyard.cli("definitions", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "weekday-report" in line)
    assert "every weekday at 06:00 Europe/Berlin" in row
    assert saved["next_runs"][0][:19].replace("T", " ") in row

    shown = dockyard.cli("definitions", "show", str(definition_id))
    assert shown.returncode == 0, shown.stderr
    assert "triggers: every weekday at 06:00 Europe/Berlin" in shown.stdout
    assert shown.stdout.count("  next:   ") == 5
    as_json = json.loads(dockyard.cli("definitions", "show", str(definition_id),
                                      "--json").stdout)
    assert as_json["id"] == definition_id and as_json["fires"] == []
    assert as_json["backfills"] == []

    paused = dockyard.cli("definitions", "pause", str(definition_id))
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == f"Definition {definition_id} weekday-report paused.\n"
    assert dockyard.get(f"/definitions/{definition_id}")["paused"] is True
    assert "paused" in dockyard.cli("definitions", "show", str(definition_id)).stdout
    resumed = dockyard.cli("definitions", "resume", str(definition_id))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"Definition {definition_id} weekday-report resumed; "
                                     "next run at ")
    assert dockyard.get(f"/definitions/{definition_id}")["paused"] is False


def test_after_and_on_batch_triggers_and_a_backfill(dockyard: TriggerDockyard) -> None:
    dockyard.orders("2024-01-01", "2024-01-02", "2023-12-31")
    upstream = dockyard.created_id(dockyard.cli(
        "definitions", "create", "extract", "--image", IMAGE, "--", "python", "extract.py"))
    assert dockyard.get(f"/definitions/{upstream}")["command"] == ["python", "extract.py"]
    after = dockyard.cli("definitions", "create", "load", "--image", IMAGE, "--command",
                         "true", "--after", f"{upstream}:failed")
    after_id = dockyard.created_id(after)
    assert f"  runs after #{upstream} fails" in after.stdout
    assert dockyard.get(f"/definitions/{after_id}")["after"] == {"definition_id": upstream,
                                                                  "on": "failed"}

    on_batch = dockyard.cli("definitions", "create", "refresh", "--image", IMAGE, "--command",
                            "true", "--on-batch", "sales/orders", "--partition", "date=2024-*")
    refresh = dockyard.created_id(on_batch)
    assert "  runs on each new batch of sales/orders where date matches 2024-*" \
        in on_batch.stdout
    assert dockyard.get(f"/definitions/{refresh}")["on_batch"] == {
        "namespace": "sales", "table": "orders", "partition": {"date": "2024-*"}}

    started = dockyard.cli("definitions", "backfill", str(refresh), "--partition",
                           "date=2024-01-*", "--max-parallel", "1")
    assert started.returncode == 0, started.stderr
    first = started.stdout.splitlines()[0]
    assert first.endswith(f"of definition {refresh}: 2 runs, at most 1 at a time.")
    backfills = dockyard.get(f"/definitions/{refresh}/backfills")["backfills"]
    assert [b["items_total"] for b in backfills] == [2]
    shown = dockyard.cli("definitions", "show", str(refresh)).stdout
    assert f"backfill {backfills[0]['id']}: 0 of 2 started" in shown

    too_many = dockyard.cli("definitions", "backfill", str(refresh), "--max-parallel", "50")
    assert too_many.returncode == 2
    assert too_many.stderr.startswith("max_parallel: "), too_many.stderr
    assert len(dockyard.get(f"/definitions/{refresh}/backfills")["backfills"]) == 1


def test_a_notebook_definition_from_a_local_file(dockyard: TriggerDockyard,
                                                  tmp_path: Path) -> None:
    write_notebook(tmp_path / "etl.ipynb", "print(alpha)")
    created = dockyard.cli("definitions", "create", "etl", "--notebook", "etl.ipynb",
                           "-p", "alpha=0.5", "-p", "day=2024-01-01", "--image", IMAGE,
                           "--cron", "@daily", "--paused")
    definition_id = dockyard.created_id(created)
    saved = dockyard.get(f"/definitions/{definition_id}")
    assert saved["kind"] == "notebook" and saved["paused"] is True
    assert saved["notebook"]["name"] == "etl.ipynb"
    assert saved["notebook"]["parameters"] == {"alpha": 0.5, "day": "2024-01-01"}
    assert saved["next_runs"] == []
    shown = dockyard.cli("definitions", "show", str(definition_id)).stdout
    assert "notebook: etl.ipynb" in shown and "  -p alpha=0.5" in shown


def test_what_is_refused_is_a_field_line_and_exit_2_with_nothing_saved(
    dockyard: TriggerDockyard,
) -> None:
    bad_cron = dockyard.cli("definitions", "create", "bad", "--image", IMAGE, "--command",
                            "true", "--cron", "61 * * * *")
    assert bad_cron.returncode == 2
    assert bad_cron.stderr.startswith("schedule.cron: "), bad_cron.stderr
    bad_zone = dockyard.cli("definitions", "create", "bad", "--image", IMAGE, "--command",
                            "true", "--cron", "0 6 * * *", "--timezone", "Mars/Olympus")
    assert bad_zone.returncode == 2
    assert bad_zone.stderr.startswith("schedule.timezone: "), bad_zone.stderr
    no_table = dockyard.cli("definitions", "create", "bad", "--image", IMAGE, "--command",
                            "true", "--on-batch", "sales/nowhere")
    assert no_table.returncode == 2
    assert no_table.stderr.startswith("on_batch.table: "), no_table.stderr
    # Mistakes the command line itself sees: usage errors, also exit 2.
    for args in (("--after", "seven"), ("--after", "7:maybe"), ("--on-batch", "orders"),
                 ("--partition", "date=1"), ("--timezone", "UTC")):
        refused = dockyard.cli("definitions", "create", "bad", "--image", IMAGE,
                               "--command", "true", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert "Error: " in refused.stderr and "Traceback" not in refused.stderr
    neither = dockyard.cli("definitions", "create", "bad", "--image", IMAGE)
    assert neither.returncode == 2 and "give one of COMMAND" in neither.stderr
    assert dockyard.definitions() == []
    missing = dockyard.cli("definitions", "pause", "999")
    assert missing.returncode == 1 and "999" in missing.stderr

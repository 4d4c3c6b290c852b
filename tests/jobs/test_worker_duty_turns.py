"""The worker gives each of its duties a turn at the duty's own pace: the image catalog's
on every pass of the loop, since an admin waits for a queued build to start, the others
every DUTY_SECONDS."""

from __future__ import annotations

import pytest

from dockyard.settings import Settings
from dockyard.worker import loop
from dockyard.worker.images import ImageDuty
from dockyard.worker.loop import Worker


class CountingDuty:
    def __init__(self, turn_seconds: float | None = None) -> None:
        if turn_seconds is not None:
            self.turn_seconds = turn_seconds
        self.turns = 0

    def __call__(self, worker: Worker) -> object:
        self.turns += 1
        return None

    def reconcile(self, worker: Worker) -> None:
        pass


def test_a_duty_gets_its_turns_at_its_own_pace(migrated: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # So long that a duty without a pace of its own has only its first turn here.
    monkeypatch.setattr(loop, "DUTY_SECONDS", 3600.0)
    settings = migrated.model_copy(update={"job_backend": "local", "job_namespace": "jtdt"})
    every_pass, default_pace = CountingDuty(turn_seconds=0.0), CountingDuty()
    worker = Worker(settings, name="duty-turns", duties=[every_pass, default_pace])
    try:
        for _ in range(3):
            worker.tick()
    finally:
        worker.close()
    assert every_pass.turns == 3
    assert default_pace.turns == 1


def test_image_work_is_looked_for_on_every_pass() -> None:
    assert ImageDuty.turn_seconds == 0

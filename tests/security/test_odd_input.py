"""Odd input found by fuzzing, kept as plain cases: numbers beyond what the database
holds, digits that are not ASCII, times with no UTC equivalent. Each gets a 4xx naming
the field, or is treated as absent; none reaches the database to fail there with 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import auth
from tests.security.conftest import Seeded
from tests.security.world import SHELL_IMAGE

HUGE = "9" * 25
ALICE = auth("tok-alice")

CASES: list[tuple[str, str, Any, tuple[int, ...]]] = [
    # (method, path, json body, acceptable statuses)
    ("GET", f"/api/v1/runs/{HUGE}", None, (404,)),
    ("GET", f"/api/v1/runs?definition={HUGE}", None, (422,)),
    ("GET", f"/api/v1/images/diff?from={HUGE}&to={HUGE}", None, (422,)),
    ("GET", f"/api/v1/images/{HUGE}", None, (404,)),
    ("POST", "/api/v1/runs", {"definition_id": int(HUGE)}, (422,)),
    ("POST", "/api/v1/tables/alice-ns/orders/batches", {"run_id": int(HUGE)}, (422,)),
    ("POST", "/api/v1/tables/alice-ns/orders/reads", {"run_id": int(HUGE)}, (422,)),
    ("POST", "/api/v1/tables/alice-ns/orders/reads",
     {"as_of": "0001-01-01T00:00:00+05:00"}, (422,)),
    ("GET", "/api/v1/runs?since=9999-12-31T23:59:59", None, (200,)),  # no zone: UTC
    ("GET", "/api/v1/runs?until=0001-01-01", None, (200,)),
    ("GET", "/api/v1/runs?since=0001-01-01T00:00:00%2B05:00", None, (422,)),
    ("GET", "/api/v1/runs?until=9999-12-31T23:59:59-05:00", None, (422,)),
    ("POST", "/api/v1/runs", {"image": SHELL_IMAGE, "command": "true", "cpu": 1e308}, (422,)),
    ("POST", "/api/v1/runs", {"image": SHELL_IMAGE, "command": "true",
                              "memory_mb": int(HUGE)}, (422,)),
    ("GET", f"/jobs/?definition={HUGE}", None, (200,)),  # shown as a filter error
    ("GET", "/jobs/?definition=%C2%B2", None, (200,)),  # '²': isdigit, but no number
    ("GET", "/jobs/?until=9999-12-31", None, (200,)),
    ("GET", "/jobs/?since=0001-01-01T00:00:00%2B05:00", None, (200,)),
    ("GET", f"/jobs/new?definition={HUGE}", None, (200,)),
    ("GET", f"/jobs/new?clone={HUGE}", None, (200,)),
    ("GET", "/jobs/new?clone=%C2%B2", None, (200,)),
    ("GET", f"/jobs/runs/{HUGE}", None, (404,)),
    ("GET", "/jobs/runs/1/log-tail?offset=%C2%B2", None, (200,)),
    ("GET", f"/images/diff?from={HUGE}&to={HUGE}", None, (422,)),
    ("GET", "/images/diff?from=%C2%B2&to=1", None, (422,)),
]


@pytest.mark.parametrize("method,path,body,expected", CASES,
                         ids=[f"{m} {p}" + (" body" if b else "") for m, p, b, _ in CASES])
def test_odd_input_gets_a_clear_answer(seeded: Seeded, tmp_path: Path, method: str, path: str,
                                       body: Any, expected: tuple[int, ...]) -> None:
    app = seeded.app(tmp_path / "copy") if method != "GET" else seeded.app()
    app.config["TESTING"] = False  # errors reach the handlers, as in production
    response = app.test_client().open(path, method=method, json=body, headers=ALICE)
    assert response.status_code in expected, response.get_data(as_text=True)[:300]
    if response.status_code == 422 and path.startswith("/api/"):
        assert response.json["detail"][0]["field"]
    app.extensions["dockyard.engine"].dispose()

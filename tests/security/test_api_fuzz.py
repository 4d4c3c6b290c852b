"""schemathesis against the API's own OpenAPI document, with a user's token: whatever it
sends, the answer is never a 5xx and always matches the document (status codes, content
types, response bodies). Bounded by a number of examples per operation so that it runs
in CI in about a minute; the number of requests sent is printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import auth
from tests.security.conftest import Seeded

EXAMPLES_PER_OPERATION = 25
#: A request the schema allows may still be refused with 422 for what only the server
#: knows (an image not in the catalog, a limit the admin set, a table that does not
#: exist): the document lists 422 for those operations, and every other check applies.
EXCLUDED = [positive_data_acceptance]


class Counting:
    """WSGI middleware counting the requests that reach the app."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.requests = 0
        self.by_status: dict[int, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.requests += 1

        def counting_start(status: str, headers: Any, *args: Any) -> Any:
            code = int(status.split()[0])
            self.by_status[code] = self.by_status.get(code, 0) + 1
            return start_response(status, headers, *args)

        return self.app(environ, counting_start)


def _fuzz(operation: Any, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

    run()


def _fuzz_all(app: Any, token: str, only_admin: bool = False) -> tuple[int, dict[str, str]]:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        admin_only = operation.definition.raw["responses"].get("403", {}).get(
            "description") == "Admins only"
        if only_admin and not admin_only:
            continue
        operations += 1
        try:
            _fuzz(operation, auth(token))
        except (Exception, BaseExceptionGroup) as exc:  # all operations are tried, all reported
            failures[f"{operation.label} as {token}"] = str(exc)[:3000]
    return operations, failures


@pytest.mark.timeout(300)
def test_api_answers_by_its_document(seeded: Seeded, tmp_path: Path) -> None:
    """A user's token on every operation; then an admin's on the admin-only ones, which
    a user only ever sees refused."""
    counters = []
    failures: dict[str, str] = {}
    operations = {}
    for token, only_admin in (("tok-alice", False), ("tok-admin", True)):
        app = seeded.app(tmp_path / token)
        counter = Counting(app.wsgi_app)
        app.wsgi_app = counter  # type: ignore[method-assign]
        counters.append(counter)
        operations[token], found = _fuzz_all(app, token, only_admin)
        failures.update(found)
        app.extensions["dockyard.engine"].dispose()
    requests = sum(c.requests for c in counters)
    statuses: dict[int, int] = {}
    for counter in counters:
        for code, n in counter.by_status.items():
            statuses[code] = statuses.get(code, 0) + n
    print(f"\nschemathesis: {operations} operations, {requests} requests sent; by status: "
          + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())))
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert operations["tok-alice"] >= 35 and operations["tok-admin"] >= 5
    assert requests >= 10 * operations["tok-alice"]
    assert not [code for code in statuses if code >= 500]

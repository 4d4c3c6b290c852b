"""The data pages: browse, history timeline, preview, and rollback with confirmation."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from dockyard.data import Actor, Catalog
from dockyard.settings import Settings
from tests.data.conftest import add_run
from tests.data.helpers import store
from tests.support.hubproc import RunningHub

DAY = {"date": "20161031"}


@pytest.fixture
def filled(migrated: Settings) -> dict:
    catalog = Catalog.from_settings(migrated)
    run_id = add_run(migrated, "alice")
    first = store(catalog, Actor("alice"), "sales", "orders", DAY,
                  {"item": ["apple", "pear"], "qty": [1, 2]})
    second = store(catalog, Actor("alice", run_id=run_id), "sales", "orders", DAY,
                   {"item": ["plum"], "qty": [7]})
    return {"first": first.batch.batch_id, "second": second.batch.batch_id, "run_id": run_id}


def login(api: FlaskClient, token: str) -> None:
    with api.session_transaction() as session:
        session["token"] = token


def no_inline_code(html: str) -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert " style=" not in html and "<style" not in html, "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"


def test_browse_table_and_partition(api: FlaskClient, filled: dict) -> None:
    login(api, "tok-bob")
    index = api.get("/data/")
    assert index.status_code == 200 and "Content-Security-Policy" in index.headers
    html = index.get_data(as_text=True)
    assert "sales.orders" in html and "alice" in html
    no_inline_code(html)

    table = api.get("/data/sales/orders").get_data(as_text=True)
    assert filled["second"] in table and "date=20161031" in table
    assert f"/jobs/runs/{filled['run_id']}" in table  # a batch links back to its run
    assert "read only" in table
    no_inline_code(table)

    page = api.get("/data/sales/orders/partition?p=date%3D20161031")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    # Timeline newest first, with who, which run, rows; preview of the current batch.
    assert html.index(filled["second"]) < html.index(filled["first"])
    assert f"run {filled['run_id']}" in html and "plum" in html and "apple" not in html
    assert "Roll back to this" not in html  # bob only reads
    no_inline_code(html)

    older = api.get(f"/data/sales/orders/partition?p=date%3D20161031&batch={filled['first']}")
    assert "apple" in older.get_data(as_text=True)


def test_rollback_needs_confirmation_and_the_form_token(api: FlaskClient, filled: dict,
                                                        migrated: Settings) -> None:
    login(api, "tok-bob")
    confirm_url = f"/data/sales/orders/rollback?p=date%3D20161031&to={filled['first']}"
    assert api.get(confirm_url).status_code == 403

    login(api, "tok-alice")
    partition = api.get("/data/sales/orders/partition?p=date%3D20161031").get_data(as_text=True)
    assert "Roll back to this" in partition and confirm_url.replace("&", "&amp;") in partition
    confirm = api.get(confirm_url)
    html = confirm.get_data(as_text=True)
    assert confirm.status_code == 200 and filled["first"] in html and filled["second"] in html
    no_inline_code(html)
    token = RunningHub.csrf_token(html)

    form = {"p": "date=20161031", "to": filled["first"]}
    assert api.post("/data/sales/orders/rollback", data=form).status_code == 400
    current = Catalog.from_settings(migrated).partitions(Actor("x"), "sales", "orders")
    assert current[0].batch.batch_id == filled["second"]

    done = api.post("/data/sales/orders/rollback", data={**form, "csrf_token": token})
    assert done.status_code == 302
    follow = api.get(done.headers["Location"]).get_data(as_text=True)
    assert "Rolled back" in follow and "apple" in follow
    current = Catalog.from_settings(migrated).partitions(Actor("x"), "sales", "orders")
    assert current[0].batch.batch_id == filled["first"]


def test_missing_things_are_404_pages(api: FlaskClient, filled: dict) -> None:
    login(api, "tok-alice")
    assert api.get("/data/no/such").status_code == 404
    assert api.get("/data/sales/orders/partition?p=date%3D1999").status_code == 404
    assert api.get("/data/sales/orders/rollback?p=date%3D20161031&to=nope").status_code == 404
    bad = api.get("/data/sales/orders/partition?p=garbage")
    assert bad.status_code == 422 and "text/html" in bad.headers["Content-Type"]


def test_pages_need_a_login(api: FlaskClient) -> None:
    response = api.get("/data/")
    assert response.status_code == 302 and "/hub/login" in response.headers["Location"]


def test_run_lineage_partial_links_batches(data_app, filled: dict) -> None:
    """The jobs area includes data/_run_lineage.html on a run's page."""
    from flask import render_template_string

    with data_app.test_request_context("/"):
        html = render_template_string(
            '{% with lineage = run_lineage(run_id) %}'
            '{% include "data/_run_lineage.html" %}{% endwith %}', run_id=filled["run_id"])
    assert filled["second"] in html and filled["first"] not in html
    assert "/data/sales/orders/partition?p=date%3D20161031" in html


def test_admins_are_told_about_abandoned_batches(api: FlaskClient, filled: dict,
                                                 migrated: Settings) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from dockyard.db import make_engine, make_session_factory, transaction
    from dockyard.models import Batch, utcnow

    began = Catalog.from_settings(migrated).begin_batch(Actor("alice"), "sales", "orders", DAY)
    engine = make_engine(migrated.db_url)
    with transaction(make_session_factory(engine)) as session:
        session.execute(update(Batch).where(Batch.batch_id == began.batch_id)
                        .values(created_at=utcnow() - timedelta(days=2)))
    engine.dispose()
    login(api, "tok-alice")
    assert 'id="abandoned"' not in api.get("/data/").get_data(as_text=True)
    login(api, "tok-admin")
    html = api.get("/data/").get_data(as_text=True)
    assert "1 abandoned batch:" in html and "dockyard data gc" in html

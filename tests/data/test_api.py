"""The data API through the Flask app: validation, permissions, errors as JSON."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from dockyard.settings import Settings
from tests.conftest import auth
from tests.data.helpers import write_batch_files

BASE = "/api/v1/tables"


def begin(api: FlaskClient, token: str, path: str = "sales/orders", **body) -> dict:
    response = api.post(f"{BASE}/{path}/batches", json=body, headers=auth(token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def store(api: FlaskClient, token: str, path: str = "sales/orders", rows: int = 1,
          **body) -> dict:
    began = begin(api, token, path, **body)
    write_batch_files(began["location"], {"x": list(range(rows))})
    response = api.post(f"{BASE}/{path}/batches/{began['batch_id']}/commit", json={},
                        headers=auth(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_write_read_history_rollback(api: FlaskClient) -> None:
    first = store(api, "tok-alice", partition={"date": "1"}, rows=1)
    second = store(api, "tok-alice", partition={"date": "1"}, rows=2)
    assert second["previous_batch_id"] == first["batch"]["batch_id"]

    parts = api.get(f"{BASE}/sales/orders/partitions", headers=auth("tok-bob")).get_json()
    assert [(p["partition"], p["batch"]["rows"], p["version"]) for p in parts["partitions"]] == [
        ("date=1", 2, 2)]
    history = api.get(f"{BASE}/sales/orders/history", query_string={"partition": "date=1"},
                      headers=auth("tok-bob")).get_json()["history"]
    assert [h["batch_id"] for h in history] == [first["batch"]["batch_id"],
                                                second["batch"]["batch_id"]]
    rolled = api.post(f"{BASE}/sales/orders/rollback", json={"partition": {"date": "1"}},
                      headers=auth("tok-alice"))
    assert rolled.status_code == 200 and rolled.get_json()["action"] == "rollback"
    plan = api.post(f"{BASE}/sales/orders/reads", json={}, headers=auth("tok-bob")).get_json()
    assert [b["batch_id"] for b in plan["batches"]] == [first["batch"]["batch_id"]]
    assert plan["storage"]["kind"] == "local" and plan["schema"][0]["name"] == "x"

    table = api.get(f"{BASE}/sales/orders", headers=auth("tok-bob")).get_json()
    assert (table["owner"], table["can_write"], table["rows"]) == ("alice", False, 1)
    listed = api.get(BASE, query_string={"namespace": "sales"}, headers=auth("tok-bob"))
    assert [t["name"] for t in listed.get_json()["tables"]] == ["orders"]
    batch = api.get(f"{BASE}/sales/orders/batches/{second['batch']['batch_id']}",
                    headers=auth("tok-bob")).get_json()
    assert batch["state"] == "committed" and batch["columns"] == ["x"]


def test_permissions_across_users(api: FlaskClient) -> None:
    store(api, "tok-alice", "alice-ns/t")
    began_by_alice = begin(api, "tok-alice", "alice-ns/t")

    for method, path, body in [
        ("post", "alice-ns/t/batches", {}),
        ("post", "alice-ns/other/batches", {}),
        ("post", "alice-ns/t/rollback", {}),
        ("put", "alice-ns/t", {"description": "bob's now"}),
    ]:
        response = getattr(api, method)(f"{BASE}/{path}", json=body, headers=auth("tok-bob"))
        assert response.status_code == 403, path
        assert response.get_json()["error"] == "Permission denied"
    # Someone else's pending batch does not exist for bob.
    for path in (f"alice-ns/t/batches/{began_by_alice['batch_id']}/commit",):
        assert api.post(f"{BASE}/{path}", json={}, headers=auth("tok-bob")).status_code == 404
    assert api.get(f"{BASE}/alice-ns/t/batches/{began_by_alice['batch_id']}",
                   headers=auth("tok-bob")).status_code == 404
    # Reading is open to everyone.
    assert api.post(f"{BASE}/alice-ns/t/reads", json={},
                    headers=auth("tok-bob")).status_code == 200
    # Admins write anywhere, and may hand a namespace over.
    store(api, "tok-admin", "alice-ns/t")
    assert api.put("/api/v1/namespaces/alice-ns", json={"owner": "bob"},
                   headers=auth("tok-bob")).status_code == 403
    handed = api.put("/api/v1/namespaces/alice-ns", json={"owner": "bob"},
                     headers=auth("tok-admin"))
    assert handed.status_code == 200 and handed.get_json()["owner"] == "bob"
    store(api, "tok-bob", "alice-ns/t")
    namespaces = api.get("/api/v1/namespaces", headers=auth("tok-alice")).get_json()
    assert namespaces["namespaces"] == [
        {"name": "alice-ns", "owner": "bob", "tables": 1, "can_write": False,
         "created_at": namespaces["namespaces"][0]["created_at"]}]


def test_put_table(api: FlaskClient) -> None:
    created = api.put(f"{BASE}/sales/orders", json={"partition_keys": ["date"],
                                                    "description": "Orders"},
                      headers=auth("tok-alice"))
    assert created.status_code == 201 and created.get_json()["partition_keys"] == ["date"]
    again = api.put(f"{BASE}/sales/orders", json={"description": "All orders"},
                    headers=auth("tok-alice"))
    assert again.status_code == 200 and again.get_json()["description"] == "All orders"
    store(api, "tok-alice", partition={"date": "1"})
    fixed = api.put(f"{BASE}/sales/orders", json={"partition_keys": ["day"]},
                    headers=auth("tok-alice"))
    assert fixed.status_code == 409 and "cannot change" in fixed.get_json()["detail"]


@pytest.mark.parametrize("method, path, body, status, field", [
    ("post", "sales/orders/batches", {"partition": {"date": "../x"}}, 422, "partition.date"),
    ("post", "sales/orders/batches", {"partition": {"date": 1.5}}, 422, "partition.date"),
    ("post", "sales/orders/batches", {"partition": "date=1"}, 422, "partition"),
    ("post", "sales/orders/batches", {"surprise": 1}, 422, "surprise"),
    ("post", "sales/orders/batches", {"schema": [{"name": "x"}]}, 422, "schema.0.type"),
    ("post", "sales/orders/batches", {"run_id": 0}, 422, "run_id"),
    ("post", "sales/orders/batches", {"run_id": 999}, 404, None),
    ("post", "Sales/orders/batches", {}, 422, "namespace"),
    ("post", "sales/or.ders/batches", {}, 422, "table"),
    ("put", "sales/orders", {"partition_keys": ["Date"]}, 422, "partition_keys"),
    ("put", "sales/orders", {"partition_keys": ["a", "a"]}, 422, "partition_keys"),
    ("post", "sales/orders/reads", {"as_of": "yesterday"}, 422, "as_of"),
    ("post", "sales/orders/reads", {"batch_id": "x", "as_of": "2020-01-01T00:00:00"}, 422,
     "batch_id"),
    ("post", "sales/orders/rollback", {"to_batch": ""}, 422, "to_batch"),
])
def test_bad_input_is_a_4xx_naming_the_field(api: FlaskClient, method: str, path: str,
                                             body: dict, status: int, field: str | None) -> None:
    store(api, "tok-alice", partition={"date": "1"})
    response = getattr(api, method)(f"{BASE}/{path}", json=body, headers=auth("tok-alice"))
    assert response.status_code == status, response.get_json()
    payload = response.get_json()
    assert set(payload) == {"error", "detail"}
    if field is not None:
        assert field in [d["field"] for d in payload["detail"]]


@pytest.mark.parametrize("path, query, status", [
    ("no/such", {}, 404),
    ("no/such/partitions", {}, 404),
    ("sales/orders/history", {"partition": "date"}, 422),
    ("sales/orders/history", {"partition": "nokey=1"}, 422),
    ("sales/orders/history", {"limit": "0"}, 422),
    ("sales/orders/history", {"limit": "many"}, 422),
    ("sales/orders/preview", {"limit": "1000"}, 422),
    ("sales/orders/preview", {"batch_id": "01NOSUCHBATCH000000000000000"}, 404),
    ("sales/orders/batches/01NOSUCHBATCH000000000000000", {}, 404),
])
def test_bad_queries(api: FlaskClient, path: str, query: dict, status: int) -> None:
    store(api, "tok-alice")
    response = api.get(f"{BASE}/{path}", query_string=query, headers=auth("tok-alice"))
    assert response.status_code == status, response.get_json()
    assert set(response.get_json()) == {"error", "detail"}


def test_bodies_that_are_not_json(api: FlaskClient) -> None:
    url = f"{BASE}/sales/orders/batches"
    assert api.post(url, data="{", content_type="application/json",
                    headers=auth("tok-alice")).status_code == 400
    assert api.post(url, data="x=1", headers=auth("tok-alice")).status_code == 415


def test_commit_errors(api: FlaskClient, migrated: Settings) -> None:
    began = begin(api, "tok-alice", partition={"date": "1"})
    url = f"{BASE}/sales/orders/batches/{began['batch_id']}/commit"
    incomplete = api.post(url, json={}, headers=auth("tok-alice"))
    assert incomplete.status_code == 409
    assert incomplete.get_json()["error"] == "Batch incomplete"
    write_batch_files(began["location"], {"x": [1]})
    assert api.post(url, json={}, headers=auth("tok-alice")).get_json()["already_committed"] \
        is False
    assert api.post(url, json={}, headers=auth("tok-alice")).get_json()["already_committed"] \
        is True
    mismatch = begin(api, "tok-alice", partition={"date": "2"})
    write_batch_files(mismatch["location"], {"x": ["text"]})
    refused = api.post(f"{BASE}/sales/orders/batches/{mismatch['batch_id']}/commit", json={},
                       headers=auth("tok-alice"))
    assert refused.status_code == 409
    body = refused.get_json()
    assert body["error"] == "Schema mismatch"
    assert body["detail"]["columns"] == [{"column": "x",
                                          "problem": "type string, the table has int64"}]


def test_authentication_and_csrf(api: FlaskClient) -> None:
    assert api.get(BASE).status_code == 401
    assert api.get(BASE, headers=auth("tok-nobody")).status_code == 401
    # A browser session may use the API, but its POSTs need the CSRF token.
    with api.session_transaction() as session:
        session["token"] = "tok-alice"
    assert api.get(BASE).status_code == 200
    refused = api.post(f"{BASE}/sales/orders/batches", json={})
    assert refused.status_code == 400 and "form token" in refused.get_json()["error"]


def test_openapi_documents_the_data_routes(api: FlaskClient) -> None:
    spec = api.get("/api/v1/openapi.json").get_json()
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/tables", "get"),
        ("/api/v1/tables/{namespace}/{name}", "put"),
        ("/api/v1/tables/{namespace}/{name}/batches", "post"),
        ("/api/v1/tables/{namespace}/{name}/batches/{batch_id}/commit", "post"),
        ("/api/v1/tables/{namespace}/{name}/partitions", "get"),
        ("/api/v1/tables/{namespace}/{name}/history", "get"),
        ("/api/v1/tables/{namespace}/{name}/rollback", "post"),
        ("/api/v1/tables/{namespace}/{name}/reads", "post"),
        ("/api/v1/tables/{namespace}/{name}/preview", "get"),
    ]:
        assert method in paths[path], (path, method)
    begin_body = paths["/api/v1/tables/{namespace}/{name}/batches"]["post"]["requestBody"]
    assert begin_body["content"]["application/json"]["schema"]["$ref"].endswith("/BeginIn")

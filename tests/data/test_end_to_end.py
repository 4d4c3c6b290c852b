"""Through a real Dockyard (JupyterHub, proxy, web service): a user's hub token lets the
Python client store and load a frame, and the data page shows it after the hub login."""

from __future__ import annotations

import pandas as pd
import pytest
import requests
from dockyard_data import Client, ClientConfig, PermissionDenied

from tests.support.hubproc import RunningHub


@pytest.mark.hub
def test_client_with_a_hub_token_stores_and_loads(running_hub: RunningHub) -> None:
    session = running_hub.create_user("dana")
    token = running_hub.hub_token(session, "dana")
    client = Client(config=ClientConfig(url=running_hub.service(""), token=token))

    df = pd.DataFrame({"city": ["Oslo", "Lima"], "temp": [3.5, 19.0]})
    first = client.store_dataframe(df, "dana-weather", "daily", partition={"day": "20240101"})
    client.store_dataframe(df.assign(temp=[4.0, 20.0]), "dana-weather", "daily",
                           partition={"day": "20240101"})
    assert client.load_dataframe("dana-weather", "daily")["temp"].tolist() == [4.0, 20.0]
    client.rollback("dana-weather", "daily", {"day": "20240101"})
    loaded = client.load_dataframe("dana-weather", "daily")
    pd.testing.assert_frame_equal(loaded, df.assign(day="20240101"), check_dtype=False)
    assert [h["actor"] for h in client.history("dana-weather", "daily")] == ["dana"] * 3
    assert first["created_by"] == "dana"

    # Another user reads it but cannot write to dana's namespace.
    other = running_hub.create_user("eve")
    eve = Client(config=ClientConfig(url=running_hub.service(""),
                                     token=running_hub.hub_token(other, "eve")))
    assert len(eve.load_dataframe("dana-weather", "daily")) == 2
    with pytest.raises(PermissionDenied):
        eve.store_dataframe(df, "dana-weather", "daily", partition={"day": "20240102"})

    # The data pages, reached through the hub's login and OAuth.
    page = session.get(running_hub.service("data/dana-weather/daily"), timeout=30)
    assert page.status_code == 200 and "day=20240101" in page.text
    assert requests.get(running_hub.service("api/v1/tables"), timeout=10).status_code == 401

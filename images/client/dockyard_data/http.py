"""The catalog API over HTTP (requests), turning error responses into exceptions."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dockyard_data.config import ClientConfig
from dockyard_data.errors import NotConfigured, ServiceUnavailable, error_for


class CatalogAPI:
    def __init__(self, config: ClientConfig) -> None:
        if not config.url:
            raise NotConfigured(
                "Dockyard's address is not set: set DOCKYARD_URL (e.g. "
                "https://dockyard.example.com/services/dockyard/) and DOCKYARD_TOKEN (a "
                "JupyterHub API token). Inside Dockyard notebooks and jobs both are set.")
        if not config.token:
            raise NotConfigured("No token: set DOCKYARD_TOKEN to a JupyterHub API token "
                                "(Hub control panel → Token).")
        self.config = config
        self.base = config.url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"token {config.token}",
                                     "User-Agent": "dockyard-data"})
        # Only failures to connect are retried: the request never reached the server.
        retry = Retry(total=3, connect=3, read=0, status=0, backoff_factor=0.3,
                      allowed_methods=None)
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def table_path(self, namespace: str, table: str, *rest: str) -> str:
        parts = [quote(str(namespace), safe=""), quote(str(table), safe="")]
        parts += [quote(str(p), safe="") for p in rest]
        return "/tables/" + "/".join(parts)

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None) -> Any:
        url = self.base + path
        try:
            response = self.session.request(method, url, json=json, params=params,
                                            timeout=(10, self.config.timeout))
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"Cannot reach Dockyard at {self.config.url}: "
                                     f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                error, detail = str(body.get("error", "")), body.get("detail")
            except ValueError:
                error = response.reason or "HTTP error"
                detail = (f"Dockyard answered {response.status_code} {response.reason} "
                          f"for {method} {url}; is DOCKYARD_URL the Dockyard service "
                          "address (…/services/dockyard/)?")
            raise error_for(response.status_code, error, detail) from None
        try:
            return response.json()
        except ValueError:
            raise ServiceUnavailable(f"Dockyard answered {method} {url} with something that "
                                     "is not JSON; is DOCKYARD_URL the Dockyard service "
                                     "address (…/services/dockyard/)?") from None

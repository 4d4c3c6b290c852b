"""Dockyard's REST API as the notebook server calls it: its address and the server's own
token from the environment, and Dockyard's refusals turned into sentences JupyterLab shows.

Blocking calls (requests); the scheduler runs them in a thread so that the notebook
server's event loop never waits on Dockyard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import requests
from jupyter_scheduler.exceptions import SchedulerError

# How Dockyard's field names read in JupyterLab's form: the image is the environment, the
# pool the compute type, the uploaded notebook the input file.
FIELD_LABELS = {
    "image": "Environment",
    "pool": "Compute type",
    "notebook": "Input file",
    "notebook.path": "Input file",
    "parameters": "Parameters",
    "tags": "Tags",
    "name": "Job name",
    "schedule": "Schedule",
    "schedule.cron": "Schedule",
    "schedule.timezone": "Time zone",
    "definition_id": "Job definition",
}
CONNECT_SECONDS = 10
READ_SECONDS = 120


class DockyardError(SchedulerError):
    """Dockyard refused a call or could not be reached; the message is for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def refusal_message(status: int, body: Any, reason: str = "") -> str:
    """One sentence from Dockyard's error answer ``{"error", "detail"}``, the detail
    being a sentence or a list of ``{"field", "message"}``, with each field named as
    JupyterLab's form names it."""
    if not isinstance(body, dict):
        return f"Dockyard answered {status} {reason}".strip()
    error = str(body.get("error") or reason or f"HTTP {status}")
    detail = body.get("detail")
    if isinstance(detail, list):
        problems = []
        for item in detail:
            if isinstance(item, dict):
                field = str(item.get("field") or "")
                label = FIELD_LABELS.get(field, field)
                named = f"{label} ({field})" if label != field else field
                problems.append(f"{named}: {item.get('message', '')}" if field
                                else str(item.get("message", "")))
            else:
                problems.append(str(item))
        return f"{error}: " + "; ".join(problems) if problems else error
    if detail:
        return f"{error}: {detail}"
    return error


@dataclass(frozen=True)
class DockyardAPI:
    """``$DOCKYARD_URL/api/v1`` with ``Authorization: token $JUPYTERHUB_API_TOKEN``."""

    url: str
    token: str
    #: The server's owner: the runs listed are theirs (an admin's token sees everyone's).
    user: str = ""
    #: Where the browser reaches the hub (JupyterHub's base URL), for links to Dockyard's
    #: pages.
    hub_base_url: str = "/"

    @classmethod
    def from_env(cls) -> DockyardAPI:
        url = os.environ.get("DOCKYARD_URL", "").strip()
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "").strip()
        if not url or not token:
            raise DockyardError(
                "Notebook jobs run in Dockyard, but this server does not know where Dockyard is "
                "(DOCKYARD_URL and JUPYTERHUB_API_TOKEN must be set; Dockyard's notebook "
                "servers have both)."
            )
        return cls(url=url.rstrip("/"), token=token,
                   user=os.environ.get("JUPYTERHUB_USER", ""),
                   hub_base_url=os.environ.get("JUPYTERHUB_BASE_URL", "/"))

    def run_page(self, run_id: int) -> str:
        """The run's page in Dockyard, as a link the browser follows from JupyterLab."""
        return f"{self.hub_base_url.rstrip('/')}/services/dockyard/jobs/runs/{run_id}"

    def definition_page(self, definition_id: int) -> str:
        return f"{self.hub_base_url.rstrip('/')}/services/dockyard/jobs/definitions/" \
            f"{definition_id}"

    # -- calls -----------------------------------------------------------------------------
    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._call("GET", path, params=params).json()

    def post(self, path: str, *, data: dict[str, str] | None = None,
             files: dict[str, tuple[str, bytes, str]] | None = None,
             json: dict[str, Any] | None = None) -> Any:
        """POST form fields and files as multipart/form-data, or JSON (or nothing at all)."""
        return self._call("POST", path, data=data, files=files, json=json).json()

    def put(self, path: str, *, json: dict[str, Any]) -> Any:
        return self._call("PUT", path, json=json).json()

    def delete(self, path: str) -> None:
        self._call("DELETE", path)

    def download(self, path: str) -> bytes | None:
        """A file's bytes; None when Dockyard has no such file (404)."""
        try:
            return self._call("GET", path).content
        except DockyardError as exc:
            if exc.status == 404:
                return None
            raise

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.url}/api/v1{path}"
        try:
            response = requests.request(
                method, url, headers={"Authorization": f"token {self.token}"},
                timeout=(CONNECT_SECONDS, READ_SECONDS), **kwargs,
            )
        except requests.RequestException as exc:
            raise DockyardError(f"Dockyard could not be reached at {self.url}: "
                                f"{type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise DockyardError(refusal_message(response.status_code, body, response.reason),
                                status=response.status_code)
        return response

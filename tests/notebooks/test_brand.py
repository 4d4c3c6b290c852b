"""One product: the hub's pages (sign-in, sign-up, home, spawn form, token, errors) and
the Dockyard service's pages carry the same name, logo and navigation bar."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.notebooks.conftest import NotebookHub

pytestmark = [pytest.mark.docker, pytest.mark.hub]

LOGO = Path(__file__).resolve().parents[2] / "dockyard" / "web" / "static" / "dockyard-logo.svg"
AREAS = [("notebooks", "/hub/home"), ("jobs", "/services/dockyard/jobs/"),
         ("clusters", "/services/dockyard/clusters/"),
         ("data", "/services/dockyard/data/"), ("images", "/services/dockyard/images/"),
         ("token", "/hub/token")]
ADMIN_AREAS = [*AREAS, ("admin", "/hub/admin"), ("signups", "/hub/authorize")]


@dataclass
class Chrome:
    """What a page shows around its content."""

    title: str = ""
    brand: str = ""
    logo: str = ""
    areas: list[tuple[str, str]] = field(default_factory=list)


class ChromeParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.chrome = Chrome()
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        element_id = attr.get("id") or ""
        if tag == "title":
            self._in = "title"
        elif element_id == "dockyard-brand":
            self._in = "brand"
        elif element_id == "dockyard-logo":
            self.chrome.logo = attr.get("src") or ""
        elif tag == "a" and element_id.startswith("dockyard-nav-"):
            self.chrome.areas.append((element_id.removeprefix("dockyard-nav-"),
                                      attr.get("href") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "a"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.chrome.title += data.strip()
        elif self._in == "brand":
            self.chrome.brand += data.strip()


def chrome_of(session: requests.Session, url: str, status: int = 200) -> Chrome:
    response = session.get(url, timeout=60)
    assert response.status_code == status, (url, response.status_code, response.text[-2000:])
    parser = ChromeParser()
    parser.feed(response.content.decode("utf-8"))
    chrome = parser.chrome
    assert chrome.brand == "Dockyard", (url, chrome)
    assert chrome.title.endswith("· Dockyard") or chrome.title == "Dockyard", (url, chrome)
    assert "JupyterHub" not in chrome.title and "Jupyter" not in chrome.brand
    assert "JupyterHub logo" not in response.text
    # Light only (this navigation bar has no dark mode toggle); the hub's other scripts stay.
    assert "darkmode.js" not in response.text and "bootstrap.bundle.min.js" in response.text
    logo = session.get(urljoin(url, chrome.logo), timeout=30)
    assert logo.status_code == 200 and logo.content == LOGO.read_bytes(), (url, chrome.logo)
    assert logo.headers["Content-Type"].startswith("image/svg+xml")
    return chrome


def test_every_page_wears_one_brand_and_one_navigation_bar(notebook_hub: NotebookHub) -> None:
    hub = notebook_hub.hub
    anonymous = requests.Session()
    for path in ("/hub/login", "/hub/signup"):
        assert chrome_of(anonymous, hub.url + path).areas == []  # nothing to navigate yet

    notebook_hub.user("sven")
    sven = notebook_hub.sessions["sven"]
    pages = {
        "/hub/home": 200, "/hub/spawn": 200, "/hub/token": 200, "/hub/nonexistent": 404,
        "/services/dockyard/jobs/": 200, "/services/dockyard/data/": 200,
        "/services/dockyard/jobs/runs/987654": 404,
    }
    for path, status in pages.items():
        assert chrome_of(sven, hub.url + path, status).areas == AREAS, path

    admin = hub.login()
    for path in ("/hub/home", "/hub/admin", "/hub/authorize", "/services/dockyard/images/"):
        assert chrome_of(admin, hub.url + path).areas == ADMIN_AREAS, path

    titles = {path: chrome_of(sven, hub.url + path, status).title
              for path, status in pages.items()}
    assert titles["/hub/home"] == "Notebooks · Dockyard"
    assert titles["/hub/spawn"] == "Start a notebook server · Dockyard"
    assert titles["/hub/nonexistent"] == "Page not found · Dockyard"
    assert titles["/services/dockyard/jobs/"] == "Jobs · Dockyard"

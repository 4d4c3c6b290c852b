"""The engine window's own route: one file of a user's home volume, read for the web
service (which has no socket in docker compose), and NotebookHomes reading through it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

from dockyard.containers import NotebookHomes
from dockyard.engine_proxy import HOME_FILE_ROUTE, HomeFileRoute, make_server
from dockyard.errors import Unavailable
from dockyard.jobs.notebooks import HomeFileMissing
from dockyard.settings import Settings
from spawner.notebooks.homes import HOME_DIR, VolumeHomes, home_volume_name
from tests.support.ports import free_ports
from tests.support.requirements import require_image

pytestmark = pytest.mark.docker
BASE = "debian:bookworm-slim"
USER = "ada@example.org"  # escaped in the volume's name as the spawner escapes it
NOTEBOOK = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
LARGE = b"x" * 5000
MAX_BYTES = 4096


@dataclass
class Window:
    url: str  # the home-file route
    prefix: str


@pytest.fixture
def prefix() -> str:
    return "dyt" + secrets.token_hex(3)


@pytest.fixture
def home(prefix: str) -> Iterator[str]:
    """USER's home volume, named and labelled as the Docker spawner makes it, with
    work/etl.ipynb and work/large.bin written by a one-shot container."""
    require_image(BASE)
    engine = docker.from_env(timeout=60)
    name = home_volume_name(prefix, USER)
    try:
        engine.volumes.create(name, labels={"dockyard.test": "home"})
        engine.containers.run(
            BASE, ["sh", "-c", 'mkdir -p work && printf %s "$NOTEBOOK" > work/etl.ipynb && '
                   'printf %s "$LARGE" > work/large.bin && ln -s etl.ipynb work/link.ipynb'],
            environment={"NOTEBOOK": NOTEBOOK.decode(), "LARGE": LARGE.decode()},
            working_dir=HOME_DIR, volumes={name: {"bind": HOME_DIR, "mode": "rw"}},
            network_disabled=True, remove=True, labels={"dockyard.test": "home-writer"})
        yield name
    finally:
        try:
            for container in engine.containers.list(all=True, filters={"volume": name}):
                container.remove(force=True)
            for volume in engine.volumes.list(filters={"name": name}):
                volume.remove(force=True)
        finally:
            engine.close()


@pytest.fixture
def window(prefix: str) -> Iterator[Window]:
    """The engine proxy, serving homes of ``prefix`` as `dockyard engine-proxy` does."""
    require_image(BASE)
    (port,) = free_ports(1)
    route = HomeFileRoute(VolumeHomes(prefix, BASE), MAX_BYTES)
    server = make_server("127.0.0.1", port, home_files=route)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Window(f"http://127.0.0.1:{port}{HOME_FILE_ROUTE}", prefix)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def get(window: Window, **params: str) -> requests.Response:
    return requests.get(window.url, params={"user": USER, "max_bytes": "100000", **params},
                        timeout=60)


def test_a_file_of_the_home_is_read(home: str, window: Window) -> None:
    answer = get(window, path="work/etl.ipynb")
    assert answer.status_code == 200, answer.text
    assert answer.content == NOTEBOOK
    assert answer.headers["Content-Type"] == "application/octet-stream"
    # An absolute path inside the home is the same file.
    assert get(window, path=f"{HOME_DIR}/work/etl.ipynb").content == NOTEBOOK


def test_no_more_than_the_cap_whatever_is_asked(home: str, window: Window) -> None:
    answer = get(window, path="work/large.bin", max_bytes="100000")
    assert answer.status_code == 200
    assert answer.content == LARGE[:MAX_BYTES]
    assert get(window, path="work/large.bin", max_bytes="10").content == LARGE[:10]


@pytest.mark.parametrize("path, sentence", [
    ("work/missing.ipynb", "there is no work/missing.ipynb in your home"),
    ("work", "work is a directory, not a notebook"),
    ("work/link.ipynb", "work/link.ipynb is a link; give the file itself"),
])
def test_what_is_not_a_file_is_404_with_a_sentence(home: str, window: Window, path: str,
                                                   sentence: str) -> None:
    answer = get(window, path=path)
    assert answer.status_code == 404
    assert answer.json() == {"message": sentence}


def test_a_user_without_a_home_is_404(window: Window) -> None:
    answer = get(window, path="work/etl.ipynb", user="nobody-here")
    assert answer.status_code == 404
    assert "you have no home yet" in answer.json()["message"]


@pytest.mark.parametrize("params, sentence", [
    ({"path": "../other/work/etl.ipynb"}, "is outside the home"),
    ({"path": "work/../../etc/passwd"}, "is outside the home"),
    ({"path": "/etc/passwd"}, "is outside the home"),
    ({"path": ""}, "is outside the home"),
    ({"path": "work/etl.ipynb", "max_bytes": "0"}, "max_bytes"),
    ({"path": "work/etl.ipynb", "max_bytes": "-5"}, "max_bytes"),
    ({"path": "work/etl.ipynb", "max_bytes": "9" * 5000}, "max_bytes"),
    ({"path": "work/etl.ipynb", "user": ""}, "user"),
    ({}, "give path once each"),
])
def test_bad_input_is_400(home: str, window: Window, params: dict[str, str],
                          sentence: str) -> None:
    answer = get(window, **params)
    assert answer.status_code == 400
    assert sentence in answer.json()["message"]


def test_only_get_and_the_engine_stays_read_only(window: Window) -> None:
    posted = requests.post(window.url, params={"user": USER, "path": "work/etl.ipynb",
                                               "max_bytes": "10"}, timeout=10)
    assert posted.status_code == 405
    assert posted.headers["Allow"] == "GET"
    base = window.url.removesuffix(HOME_FILE_ROUTE)
    created = requests.post(base + "/v1.41/containers/create", json={"Image": BASE}, timeout=10)
    assert created.status_code == 403
    assert requests.get(base + "/v1.41/info", timeout=10).status_code == 403
    assert requests.get(base + "/_ping", timeout=10).status_code == 200
    # Elsewhere under /dockyard nothing is served.
    assert requests.get(base + "/dockyard/other", timeout=10).status_code == 403


def test_a_proxy_without_homes_does_not_serve_them(home: str) -> None:
    (port,) = free_ports(1)
    server = make_server("127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{port}{HOME_FILE_ROUTE}",
                              params={"user": USER, "path": "work/etl.ipynb",
                                      "max_bytes": "10"}, timeout=10)
        assert answer.status_code == 403
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_command_serves_homes_named_by_its_settings(home: str, prefix: str,
                                                       tmp_path: Path) -> None:
    """`dockyard engine-proxy` as docker compose starts it: prefix and image from env."""
    (port,) = free_ports(1)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(tmp_path), DOCKYARD_DOCKER_NAME_PREFIX=prefix,
               DOCKYARD_NOTEBOOK_IMAGE=BASE, DOCKYARD_NOTEBOOK_JOB_MAX_MB="1")
    log = (tmp_path / "engine-proxy.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "dockyard.cli", "engine-proxy",
                                "--bind", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "engine-proxy.log").read_text()
            try:
                if requests.get(base + "/_ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        answer = requests.get(base + HOME_FILE_ROUTE, timeout=60, params={
            "user": USER, "path": "work/etl.ipynb", "max_bytes": str(10 * 1024 * 1024)})
        assert answer.status_code == 200, answer.text
        assert answer.content == NOTEBOOK
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


# -- the web service's side -------------------------------------------------------------------
def homes_through(settings: Settings, url: str) -> NotebookHomes:
    return NotebookHomes(settings.model_copy(update={"home_files_url": url}))


def test_notebook_homes_read_through_the_window(settings: Settings, home: str,
                                                window: Window) -> None:
    homes = homes_through(settings, window.url)
    assert homes.read(USER, "work/etl.ipynb", 1_000_000) == NOTEBOOK
    assert homes.read(USER, "work/large.bin", 100) == LARGE[:100]
    with pytest.raises(HomeFileMissing, match="there is no work/missing.ipynb in your home"):
        homes.read(USER, "work/missing.ipynb", 1000)
    with pytest.raises(HomeFileMissing, match="you have no home yet"):
        homes.read("nobody-here", "work/etl.ipynb", 1000)


def test_notebook_homes_say_when_the_window_does_not_answer(settings: Settings) -> None:
    (port,) = free_ports(1)  # nothing listens there
    homes = homes_through(settings, f"http://127.0.0.1:{port}{HOME_FILE_ROUTE}")
    with pytest.raises(Unavailable) as refused:
        homes.read(USER, "work/etl.ipynb", 1000)
    assert f"no answer from http://127.0.0.1:{port}{HOME_FILE_ROUTE}" in str(refused.value)
    assert "upload the notebook instead" in str(refused.value)

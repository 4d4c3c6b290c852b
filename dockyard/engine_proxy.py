"""A read-only window on the Docker engine, for the web service in docker compose.

The web service reads a little from the engine (does an image exist, its digest and size;
which notebook containers run which image) but must never be able to start, change or
remove anything: it is the part of Dockyard that takes every user's input, and the
Docker socket is root on the host. So the web container has no socket; it talks to this
proxy (``DOCKER_HOST=tcp://engine-api:2375``), which forwards only the GET requests below
to the socket and refuses everything else with 403.

One route is the proxy's own, not the engine's: ``GET /dockyard/home-file`` reads one file
of a user's home volume (a notebook submitted by its path), so the web service never needs
the engine's create or archive calls for it.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from dockyard.jobs.notebooks import home_path
from dockyard.settings import Settings
from spawner.engine import engine_problem

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
# Optional API version prefix, then: liveness, versions, one image's metadata, the
# container list and one container's metadata (the SDK's list() reads each container).
# Nothing that writes, streams logs or execs.
ALLOWED_PATHS = re.compile(
    r"^(/v\d+\.\d+)?/(_ping|version|images/[^?#]+/json|containers/json|containers/[^/]+/json)$"
)
# A container's environment holds its secrets (a notebook's hub token, store keys): the
# web service needs labels and the image, never that.
_CONTAINER_INSPECT = re.compile(r"^(/v\d+\.\d+)?/containers/[^/]+/json$")
_PASSED_HEADERS = ("Content-Type", "Api-Version", "Docker-Experimental", "Ostype", "Server")
HOME_FILE_ROUTE = "/dockyard/home-file"
_MAX_USERNAME = 255
_COUNT = re.compile(r"[0-9]{1,15}")


class _HomeReader(Protocol):
    def read(self, username: str, relative_path: str, max_bytes: int) -> bytes: ...


class HomeFileRoute:
    """``GET /dockyard/home-file?user=NAME&path=RELATIVE&max_bytes=N``: the first bytes of
    one file in NAME's home volume. 200 with the bytes; 404 with a sentence when the home
    or the file is missing or is not a regular file; 400 for a path outside the home or
    other bad input; 502 when the engine fails."""

    def __init__(self, homes: _HomeReader, max_bytes: int) -> None:
        self.homes = homes
        #: The most bytes one answer carries, whatever the caller asks for.
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> HomeFileRoute:
        """Homes named with DOCKYARD_DOCKER_NAME_PREFIX, read from a never-started container
        of DOCKYARD_NOTEBOOK_IMAGE, as the web service would read them with a socket."""
        from spawner.notebooks.homes import VolumeHomes

        # One byte over the notebook limit, so the web service can tell "too large".
        limit = settings.notebook_job_max_mb * 1024 * 1024 + 1
        return cls(VolumeHomes(settings.docker_name_prefix, settings.notebook_image), limit)

    def answer(self, query: str) -> tuple[int, bytes | dict[str, str]]:
        """The status and the body (the file's bytes, or a JSON message) for ``query``."""
        values = parse_qs(query, keep_blank_values=True)
        given = {name: values.get(name, []) for name in ("user", "path", "max_bytes")}
        missing = [name for name, found in given.items() if len(found) != 1]
        if missing:
            return 400, {"message": f"give {', '.join(missing)} once each"}
        user, path, max_bytes = (found[0] for found in given.values())
        if not user or len(user) > _MAX_USERNAME or not user.isprintable():
            return 400, {"message": "user must be a user's name"}
        relative = home_path(path)
        if relative is None:
            return 400, {"message": f"'{path[:200]}' is outside the home"}
        if not _COUNT.fullmatch(max_bytes) or int(max_bytes) < 1:
            return 400, {"message": "max_bytes must be a whole number above 0"}
        try:
            content = self.homes.read(user, relative, min(int(max_bytes), self.max_bytes))
        except FileNotFoundError as exc:
            return 404, {"message": str(exc)}
        except Exception as exc:
            problem = engine_problem(exc)
            if problem is None:
                log.exception("Could not read %s from %s's home", relative, user)
                return 500, {"message": "the engine window failed to read it; see its log"}
            log.warning("Could not read %s from %s's home: %s", relative, user, problem.reason)
            return 502, {"message": f"the Docker engine could not read it: {problem.reason}"}
        log.info("Read %d bytes of %s from %s's home", len(content), relative, user)
        return 200, content


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def allowed(method: str, target: str) -> bool:
    path = target.split("?", 1)[0]
    return method in ("GET", "HEAD") and ".." not in path and bool(ALLOWED_PATHS.match(path))


def make_handler(socket_path: str, timeout: float = 30,
                 home_files: HomeFileRoute | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            target = urlsplit(self.path)
            if home_files is not None and target.path == HOME_FILE_ROUTE:
                self._home_file(home_files, target.query)
                return
            if not allowed(self.command, self.path):
                log.warning("Refused %s %s", self.command, self.path.split("?", 1)[0])
                self._reply(403, {"message": "This Docker API is read-only: only image "
                                             "metadata and the container list may be read."})
                return
            connection = _UnixConnection(socket_path, timeout)
            try:
                connection.request(self.command, self.path, headers={"Host": "docker"})
                response = connection.getresponse()
                body = response.read()
            except OSError as exc:
                self._reply(502, {"message": f"the Docker engine did not answer: {exc}"})
                return
            finally:
                connection.close()
            if response.status == 200 and _CONTAINER_INSPECT.match(self.path.split("?", 1)[0]):
                body = _without_environment(body)
            self.send_response(response.status)
            for name in _PASSED_HEADERS:
                if response.getheader(name):
                    self.send_header(name, response.getheader(name))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _home_file(self, route: HomeFileRoute, query: str) -> None:
            if self.command != "GET":
                self._reply(405, {"message": f"{HOME_FILE_ROUTE} is read with GET only"},
                            allow="GET")
                return
            status, body = route.answer(query)
            if isinstance(body, dict):
                self._reply(status, body)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = _forward  # noqa: N815 - the http.server API
        do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 - refused there

        def _reply(self, status: int, payload: dict[str, Any], allow: str | None = None) -> None:
            body = json.dumps(payload).encode()
            # A refused request may have sent a body we did not read: end the connection.
            self.close_connection = True
            self.send_response(status)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if allow:
                self.send_header("Allow", allow)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("engine proxy: " + format, *args)

    return Handler


def _without_environment(body: bytes) -> bytes:
    container = json.loads(body)
    if isinstance(container.get("Config"), dict):
        container["Config"]["Env"] = []
    return json.dumps(container).encode()


def make_server(bind: str, port: int, socket_path: str = DEFAULT_SOCKET, *,
                home_files: HomeFileRoute | None = None) -> ThreadingHTTPServer:
    """The proxy; with ``home_files`` it also serves HOME_FILE_ROUTE (through the engine
    that DOCKER_HOST names, by default the same socket)."""
    server = ThreadingHTTPServer((bind, port), make_handler(socket_path, home_files=home_files))
    server.daemon_threads = True
    return server

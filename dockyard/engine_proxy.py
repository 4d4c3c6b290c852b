"""A read-only window on the Docker engine, for the web service in docker compose.

The web service reads a little from the engine (does an image exist, its digest and size;
which notebook containers run which image) but must never be able to start, change or
remove anything: it is the part of Dockyard that takes every user's input, and the
Docker socket is root on the host. So the web container has no socket; it talks to this
proxy (``DOCKER_HOST=tcp://engine-api:2375``), which forwards only the GET requests below
to the socket and refuses everything else with 403.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def make_handler(socket_path: str, timeout: float = 30) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
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

        do_GET = do_HEAD = _forward  # noqa: N815 - the http.server API
        do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 - refused there

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            # A refused request may have sent a body we did not read: end the connection.
            self.close_connection = True
            self.send_response(status)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("engine proxy: " + format, *args)

    return Handler


def _without_environment(body: bytes) -> bytes:
    container = json.loads(body)
    if isinstance(container.get("Config"), dict):
        container["Config"]["Env"] = []
    return json.dumps(container).encode()


def make_server(bind: str, port: int, socket_path: str = DEFAULT_SOCKET) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((bind, port), make_handler(socket_path))
    server.daemon_threads = True
    return server

"""Serve the web app with gunicorn (threads, so live views don't block each other)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from dockyard.settings import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app


def serve(settings: Settings, *, bind: str, port: int, threads: int = 8) -> None:
    from dockyard.web import mounted_app

    options = {
        "bind": f"{bind}:{port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 5,
        # The proxy in front (configurable-http-proxy on Node, nginx, a load balancer)
        # keeps idle connections to us open and reuses them. If we closed first (gunicorn's
        # default is 2 s), a request sent on a connection just as we close it fails with
        # "socket hang up" and the user gets a 503. So we hold idle connections longer
        # than any proxy does (Node: 5 s, nginx upstream keepalive: 60 s).
        "keepalive": 75,
        "accesslog": "-",
        "loglevel": settings.log_level.lower(),
    }
    from dockyard.logs import gunicorn_logging

    options.update(gunicorn_logging(settings))
    _Gunicorn(mounted_app(settings), options).run()

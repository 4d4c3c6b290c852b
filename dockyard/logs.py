"""Logging for the hub, the web service and the worker: text for people, JSON for machines.

With ``log_format = "json"`` every line is one JSON object (time, level, logger, message,
and ``run_id`` / ``user`` whenever the line is about a run or a request), ready for a log
collector. The run and user come from three places, first found wins: ``extra=`` on the
call, the :func:`log_context` around the code, the user of the current web request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from dockyard.settings import Settings

CONTEXT_FIELDS = ("run_id", "user")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"

# Immutable default: a block's fields are a fresh dict set by log_context, never mutated.
_context: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "dockyard_log_context", default=()
)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within this block every log line carries these fields (e.g. run_id=7, user="ada")."""
    merged = {**dict(_context.get()), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


def _request_user() -> str | None:
    """The web request's user, when the line is logged while serving one."""
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover - flask is a dependency
        return None
    if not has_request_context():
        return None
    user = g.get("user")
    return getattr(user, "name", None)


class ContextFilter(logging.Filter):
    """Puts ``run_id`` and ``user`` on each record (None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = dict(_context.get())
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, context.get(name))
        if record.user is None:  # type: ignore[attr-defined]
            record.user = _request_user()  # type: ignore[attr-defined]
        shown = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n)]
        record.context = f" [{' '.join(shown)}]" if shown else ""  # type: ignore[attr-defined]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; keys with no value are left out."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):  # a handler configured without our filter
            ContextFilter().filter(record)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            ContextFilter().filter(record)
        return super().format(record)


def formatter_for(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Route every logger of this process to one stream handler in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter_for(settings))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def gunicorn_logging(settings: Settings) -> dict[str, Any]:
    """gunicorn options that send its error and access logs through our format."""
    formatter = (
        {"()": "dockyard.logs.JsonFormatter"}
        if settings.log_format == "json"
        else {"()": "dockyard.logs.TextFormatter"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "dockyard", "filters": ["context"]}
    return {
        "logconfig_dict": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"dockyard": formatter},
            "filters": {"context": {"()": "dockyard.logs.ContextFilter"}},
            "handlers": {
                "error": {**handler, "stream": "ext://sys.stderr"},
                "access": {**handler, "stream": "ext://sys.stdout"},
            },
            # gunicorn applies this over its own defaults, root logger included.
            "root": {"level": settings.log_level, "handlers": ["error"]},
            "loggers": {
                "gunicorn.error": {
                    "level": settings.log_level,
                    "handlers": ["error"],
                    "propagate": False,
                },
                "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
            },
        }
    }


def hub_logging_config(settings: Settings) -> dict[str, Any]:
    """traitlets ``Application.logging_config`` that puts JupyterHub's lines in our format
    (merged into JupyterHub's own configuration, whose handler is named "console")."""
    if settings.log_format != "json":
        return {}
    return {
        "formatters": {"dockyard_json": {"()": "dockyard.logs.JsonFormatter"}},
        "handlers": {"console": {"formatter": "dockyard_json"}},
    }

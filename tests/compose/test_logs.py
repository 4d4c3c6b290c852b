"""Structured logs: one JSON object per line, with the run and user a line is about."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from pathlib import Path

import pytest
from flask import Flask, g

from dockyard.logs import (
    ContextFilter,
    JsonFormatter,
    configure_logging,
    gunicorn_logging,
    hub_logging_config,
    log_context,
)
from dockyard.settings import Settings
from dockyard.web.auth import User


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_run_and_user(tmp_path: Path, restore_root_logging: None) -> None:
    out = io.StringIO()
    configure_logging(Settings(home=tmp_path, log_format="json"), stream=out)
    log = logging.getLogger("dockyard.test")

    log.info("nothing about a run")
    with log_context(run_id=41, user="ada"):
        log.info("run %s started", 41)
        with log_context(user="grace"):  # inner blocks add to, and win over, outer ones
            log.warning("inner")
        try:
            raise RuntimeError("engine gone")
        except RuntimeError:
            log.exception("run failed")
    log.info("given on the call", extra={"run_id": 7, "user": "bob"})

    plain, started, inner, failed, explicit = lines(out)
    assert set(plain) == {"time", "level", "logger", "message"}
    assert plain["logger"] == "dockyard.test" and plain["level"] == "INFO"
    assert started["message"] == "run 41 started"
    assert (started["run_id"], started["user"]) == (41, "ada")
    assert (inner["run_id"], inner["user"], inner["level"]) == (41, "grace", "WARNING")
    assert failed["run_id"] == 41 and "RuntimeError: engine gone" in failed["exception"]
    assert (explicit["run_id"], explicit["user"]) == (7, "bob")


def test_text_format_appends_the_context(tmp_path: Path, restore_root_logging: None) -> None:
    out = io.StringIO()
    configure_logging(Settings(home=tmp_path, log_format="text"), stream=out)
    with log_context(run_id=3, user="ada"):
        logging.getLogger("dockyard.test").info("hello")
    logging.getLogger("dockyard.test").info("bye")
    first, second = out.getvalue().splitlines()
    assert first.endswith("dockyard.test: hello [run_id=3 user=ada]")
    assert second.endswith("dockyard.test: bye")


def test_web_request_lines_name_the_user() -> None:
    app = Flask(__name__)
    record = logging.LogRecord("dockyard.web", logging.INFO, __file__, 1, "listing runs", None,
                               None)
    with app.test_request_context("/api/v1/runs"):
        g.user = User("ada")
        ContextFilter().filter(record)
    assert json.loads(JsonFormatter().format(record))["user"] == "ada"


def test_a_setting_picks_the_format(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKYARD_LOG_FORMAT", "yaml")
    from dockyard.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="DOCKYARD_LOG_FORMAT"):
        load_settings(home=tmp_path)


def test_gunicorn_and_hub_use_the_same_format(tmp_path: Path, restore_root_logging: None) -> None:
    settings = Settings(home=tmp_path, log_format="json")
    config = gunicorn_logging(settings)["logconfig_dict"]
    assert config["formatters"]["dockyard"] == {"()": "dockyard.logs.JsonFormatter"}
    assert config["loggers"]["gunicorn.access"]["handlers"] == ["access"]
    # dictConfig accepts it as gunicorn will pass it.
    logging.config.dictConfig({**config, "root": {"level": "INFO", "handlers": []}})
    assert hub_logging_config(settings)["handlers"]["console"]["formatter"] == "dockyard_json"
    assert hub_logging_config(Settings(home=tmp_path)) == {}

"""The settings object: defaults, environment, TOML file, and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dockyard.settings import Settings, SettingsError, load_settings, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_put_state_under_home(settings: Settings) -> None:
    assert settings.port == 8000
    assert settings.db_url == f"sqlite:///{settings.home / 'dockyard.sqlite'}"
    assert settings.data_dir == str(settings.home / "data")
    assert settings.base_url == "http://127.0.0.1:8000"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKYARD_HOME", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_PORT", "8123")
    monkeypatch.setenv("DOCKYARD_DATABASE_URL", "postgresql+psycopg://u:p@db/dockyard")
    loaded = load_settings()
    assert loaded.port == 8123
    assert loaded.db_url == "postgresql+psycopg://u:p@db/dockyard"
    assert loaded.home == tmp_path.resolve()


def test_toml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "dockyard.toml"
    config.write_text('port = 9001\nadmin_user = "boss"\n')
    monkeypatch.setenv("DOCKYARD_CONFIG", str(config))
    monkeypatch.setenv("DOCKYARD_ADMIN_USER", "chief")
    loaded = load_settings()
    assert loaded.port == 9001
    assert loaded.admin_user == "chief"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DOCKYARD_PORT", "99999", "DOCKYARD_PORT"),
        ("DOCKYARD_PORT", "eighty", "DOCKYARD_PORT"),
        ("DOCKYARD_DATABASE_URL", "mysql://x@y/z", "DOCKYARD_DATABASE_URL"),
        ("DOCKYARD_DATABASE_URL", "not a url", "DOCKYARD_DATABASE_URL"),
        ("DOCKYARD_SPAWNER", "kubernetes", "DOCKYARD_SPAWNER"),
        ("DOCKYARD_CONFIG", "/nonexistent/dockyard.toml", "DOCKYARD_CONFIG"),
    ],
)
def test_bad_values_give_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(named + ":")
    assert "\n" not in message


def test_malformed_toml_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = = 3\n")
    monkeypatch.setenv("DOCKYARD_CONFIG", str(config))
    with pytest.raises(SettingsError, match="DOCKYARD_CONFIG"):
        load_settings()


def test_readme_configuration_table_matches_settings() -> None:
    """The README's table is generated from the settings; regenerate it with
    `dockyard settings --markdown` when a setting changes."""
    readme = README.read_text()
    table = markdown_table()
    assert table in readme, "README configuration table is out of date"
    documented = set(re.findall(r"`(DOCKYARD_[A-Z0-9_]+)`", readme))
    for name in Settings.model_fields:
        assert f"DOCKYARD_{name.upper()}" in documented

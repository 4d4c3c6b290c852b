"""JupyterHub configuration for Dockyard.

Every value comes from Dockyard's settings (``dockyard/settings/``); nothing is read from the
environment here directly, except what ``dockyard up`` resolved for us (the runtime
choice) and passes on as settings.
"""

# ruff: noqa: F821  (``c`` is provided by JupyterHub when it loads this file)
import os
import sys
from pathlib import Path

from dockyard.runtime import choose_runtime, engine_problems_explained
from dockyard.settings import SettingsError, load_settings
from hub.hubconfig import configure_hub

try:
    settings = load_settings()
    runtime = choose_runtime(settings)
    # The engine answered when the runtime was chosen; if it stops before the spawner is
    # configured, that is one line too.
    with engine_problems_explained(settings):
        configure_hub(
            c,
            settings,
            runtime,
            python=sys.executable,
            repo=Path(__file__).resolve().parent.parent,
            environ=dict(os.environ),
        )
except SettingsError as exc:
    # One line for the person at the console, as `dockyard` says it, not a traceback.
    print(f"dockyard: {exc}", file=sys.stderr)
    sys.exit(2)

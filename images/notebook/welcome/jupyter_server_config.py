"""A newcomer's first notebook server shows what Dockyard can do: Welcome.ipynb (next to
this file) is copied into the home directory the first time a server starts there.

Jupyter runs this file when the server starts; it is on JUPYTER_CONFIG_PATH in the
notebook image, and for local-process notebooks (development mode). A marker in the home
remembers the copy, so a Welcome.ipynb the user changed or deleted is never overwritten
or brought back. Nothing here may stop the server from starting.
"""

import logging
import shutil
from pathlib import Path

WELCOME = Path(__file__).with_name("Welcome.ipynb")
MARKER = Path(".dockyard") / "welcome-given"


def give_welcome_notebook(home: Path) -> None:
    marker = home / MARKER
    if marker.exists():
        return
    try:
        target = home / WELCOME.name
        if not target.exists():
            shutil.copyfile(WELCOME, target)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError as exc:
        logging.getLogger("ServerApp").warning("Welcome.ipynb was not copied: %s", exc)


give_welcome_notebook(Path.home())

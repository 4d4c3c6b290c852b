"""Where a person lands after signing in (and on the site's root): JupyterLab, in one click.

Stock JupyterHub sends a signed-in user to their server, starting it when it is not
running. Dockyard's spawn page has a form (image and resources), which would make that
three clicks; so a login starts the user's last choice (or the default) straight away
and shows the progress page, which links to the form for another choice.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.utils import url_path_join
from tornado.httputil import url_concat

from spawner.notebooks.options import LAST_CHOICE_QUERY


def landing_url(handler: Any) -> str | None:
    """JupyterHub's ``default_url`` for ``handler`` (None: JupyterHub's own default, the
    login page for someone not signed in)."""
    user = handler.current_user
    if user is None:
        return None
    spawner = user.spawner
    if spawner.active:
        return str(user.url)  # running or starting: JupyterHub shows it or its progress
    spawn = url_path_join(handler.hub.base_url, "spawn")
    # Without a form (local processes) the plain spawn page starts the server at once.
    return url_concat(spawn, LAST_CHOICE_QUERY) if spawner.options_form else spawn

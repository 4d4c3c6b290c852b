"""How Dockyard configures JupyterHub: login, services, roles, spawner, templates.

Kept as a function of the settings (rather than inline in jupyterhub_config.py) so that
tests can inspect the resulting configuration without starting a hub.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dockyard.containers import web_bind_address
from dockyard.logs import hub_logging_config
from dockyard.production import refuse_weak_secret
from dockyard.runtime import RuntimeChoice
from dockyard.settings import ENV_PREFIX, Settings, SettingsError
from hub.landing import landing_url
from hub.spawners import configure_spawner
from spawner.notebooks.options import LAST_CHOICE_QUERY

SERVICE_NAME = "dockyard"
WORKER_SERVICE_NAME = "dockyard-worker"
# In docker compose these run as containers of their own, not as hub-managed services.
MANAGED_ONLY_SERVICES = (SERVICE_NAME, WORKER_SERVICE_NAME)
# Variables a hub-managed service needs besides Dockyard's own settings.
_PASS_THROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "DOCKER_HOST",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
)


def proxy_command(repo: Path) -> list[str]:
    local = repo / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return [str(local)]
    found = shutil.which("configurable-http-proxy")
    return [found] if found else [str(local)]


def service_environment(
    settings: Settings, runtime: RuntimeChoice, environ: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) or k in _PASS_THROUGH}
    env.pop(f"{ENV_PREFIX}ADMIN_PASSWORD", None)  # services never need it
    env[f"{ENV_PREFIX}HOME"] = str(settings.home)
    env[f"{ENV_PREFIX}SPAWNER"] = runtime.spawner
    env[f"{ENV_PREFIX}JOB_BACKEND"] = runtime.job_backend
    return env


def configure_hub(
    c: Any,
    settings: Settings,
    runtime: RuntimeChoice,
    *,
    python: str,
    repo: Path,
    environ: dict[str, str],
) -> None:
    home = settings.home
    c.JupyterHub.ip = settings.ip
    c.JupyterHub.port = settings.port
    c.JupyterHub.hub_port = settings.hub_port
    c.JupyterHub.db_url = settings.hub_db_url
    c.JupyterHub.cookie_secret_file = str(home / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(home / "jupyterhub.pid")
    c.JupyterHub.log_level = "WARN" if settings.log_level == "WARNING" else settings.log_level
    # The hub's pages wear Dockyard's brand: its templates first, then the navigation
    # bar and logo shared with the Dockyard service's own pages.
    web = repo / "dockyard" / "web"
    c.JupyterHub.template_paths = [str(repo / "hub" / "templates"),
                                   str(web / "templates" / "shared")]
    c.JupyterHub.logo_file = str(web / "static" / "dockyard-logo.svg")
    c.JupyterHub.template_vars.update({
        "dockyard_service_url": f"/services/{SERVICE_NAME}/",
        "dockyard_last_choice_query": urlencode(LAST_CHOICE_QUERY),
    })
    c.JupyterHub.cleanup_servers = False  # notebook containers outlive a hub restart
    # Signing in starts the user's usual notebook server and shows its progress (one
    # click to JupyterLab); the home page and the spawn form are a link away.
    c.JupyterHub.default_url = landing_url
    c.ConfigurableHTTPProxy.command = proxy_command(repo)
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(home / "jupyterhub-proxy.pid")
    c.ConfigurableHTTPProxy.debug = False

    # -- login ---------------------------------------------------------------------
    c.JupyterHub.authenticator_class = "hub.auth.DockyardAuthenticator"
    c.Authenticator.admin_users = {settings.admin_user}
    c.Authenticator.allow_all = True  # NativeAuthenticator's approval decides who logs in
    c.NativeAuthenticator.open_signup = settings.open_signup
    c.NativeAuthenticator.check_common_password = True
    c.NativeAuthenticator.minimum_password_length = 8
    if settings.admin_password is not None:
        c.DockyardAuthenticator.initial_admin_password = settings.admin_password.get_secret_value()
    c.DockyardAuthenticator.admin_marker_file = str(home / "admin-created")

    # -- Dockyard's services ---------------------------------------------------------
    env = service_environment(settings, runtime, environ)
    dockyard = [python, "-m", "dockyard.cli"]
    # Containers call Dockyard directly at this address (DOCKYARD_URL); the proxy too.
    web_bind = web_bind_address(settings, runtime.spawner, runtime.job_backend)
    c.JupyterHub.services = [
        {
            "name": SERVICE_NAME,
            "display": True,
            "url": f"http://{web_bind}:{settings.web_port}",
            "command": [*dockyard, "web", "--bind", web_bind],
            "environment": env,
            "oauth_no_confirm": True,
        },
        {
            "name": WORKER_SERVICE_NAME,
            "display": False,
            "command": [*dockyard, "worker"],
            "environment": env,
        },
        {
            "name": "idle-culler",
            "display": False,
            "command": [
                python,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={settings.idle_timeout}",
                # Look often enough that a server stops within ~10% of the timeout.
                f"--cull-every={max(settings.idle_timeout // 10, 5)}",
            ],
        },
    ]
    c.JupyterHub.load_roles = [
        # Every user may open Dockyard's pages and call its API with their own token.
        {"name": "user", "scopes": ["self", f"access:services!service={SERVICE_NAME}"]},
        # Least privilege for the culler: see activity, stop servers, nothing else.
        {
            "name": "idle-culler",
            "services": ["idle-culler"],
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        },
        # The image catalog counts the notebook servers running each image (the image is
        # in the spawner's state) and refuses to delete one in use. admin:server_state
        # only adds the state to server models; no REST endpoint writes it.
        {
            "name": "dockyard-image-usage",
            "services": [SERVICE_NAME],
            "scopes": ["list:users", "read:servers", "admin:server_state"],
        },
    ]

    # -- notebooks -------------------------------------------------------------------
    configure_spawner(c, settings, runtime, python=python, environ=environ)

    # -- production: external services (docker compose), log format, extra config --------
    configure_production(c, settings)


def external_web_service(settings: Settings) -> dict[str, Any]:
    """The web container as a JupyterHub external service: a URL to route to and a token."""
    if not settings.web_url:
        raise SettingsError(
            f"{ENV_PREFIX}WEB_URL: empty, but {ENV_PREFIX}SERVICES_MODE=external needs the "
            "web service's address as the hub reaches it (e.g. http://web:10101)"
        )
    if settings.service_token is None:
        raise SettingsError(
            f"{ENV_PREFIX}SERVICE_TOKEN: empty, but {ENV_PREFIX}SERVICES_MODE=external needs "
            "the token the web service uses with the hub (run 'dockyard init-prod')"
        )
    token = settings.service_token.get_secret_value()
    refuse_weak_secret(f"{ENV_PREFIX}SERVICE_TOKEN", token)
    return {
        "name": SERVICE_NAME,
        "display": True,
        "url": settings.web_url.rstrip("/"),
        "api_token": token,
        "oauth_no_confirm": True,
    }


def configure_production(c: Any, settings: Settings) -> None:
    """What ``configure_hub`` adds last: external services (docker compose), the log
    format, extra config."""
    if settings.services_mode == "external":
        # The web service and worker run in containers of their own: keep the hub-managed
        # services that remain (the idle culler) and register the web service by URL.
        kept = [s for s in c.JupyterHub.services if s["name"] not in MANAGED_ONLY_SERVICES]
        c.JupyterHub.services = [external_web_service(settings), *kept]
    logging_config = hub_logging_config(settings)
    if logging_config:
        c.JupyterHub.logging_config = logging_config
    if settings.hub_extra_config is not None:
        path = settings.hub_extra_config
        if not path.is_file():
            raise SettingsError(
                f"{ENV_PREFIX}HUB_EXTRA_CONFIG: no such file '{path}'; mount it into the hub "
                "container or unset the setting"
            )
        # Same contract as jupyterhub_config.py itself: a Python file that sets ``c``.
        code = compile(path.read_text(), str(path), "exec")
        exec(code, {"c": c, "__file__": str(path), "__name__": "hub_extra_config"})  # noqa: S102

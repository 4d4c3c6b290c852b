"""Dockyard run by docker compose: the secrets file (``dockyard init-prod``) and the checks a
container makes before it starts.

In ``make up`` the hub starts the web service and the worker itself (managed services).
In docker compose they are containers of their own (the hub's side of that is
``hub/hubconfig.py``), and every container upgrades the database and checks its secrets as
it starts.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from dockyard.settings import ENV_PREFIX, Settings, SettingsError

# Values people type when a template asks for a secret; refused wherever a secret is read.
PLACEHOLDERS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "password", "admin", "dockyard",
     "token", "test", "example", "default", "xxx", "todo"}
)
MIN_SECRET_LENGTH = 16


# -- secrets -------------------------------------------------------------------------------
def is_weak_secret(value: str) -> bool:
    lowered = value.strip().lower()
    return (
        len(value) < MIN_SECRET_LENGTH
        or lowered in PLACEHOLDERS
        or any(lowered.startswith(p) for p in ("changeme", "change-me", "change_me", "<"))
        or len(set(value)) < 6
    )


def refuse_weak_secret(name: str, value: str) -> None:
    if is_weak_secret(value):
        raise SettingsError(
            f"{name}: looks like a placeholder or is too short (needs {MIN_SECRET_LENGTH}+ "
            "random characters); run 'dockyard init-prod' to generate the secrets"
        )


def check_container_secrets(settings: Settings, role: str, environ: dict[str, str]) -> None:
    """Refuse to start a container whose secrets are placeholders such as 'changeme'.

    docker-compose.yml already refuses to start when a secret is unset; this catches the
    values people type instead of generating them.
    """
    for url_name, url in ((f"{ENV_PREFIX}DATABASE_URL", settings.database_url),
                          (f"{ENV_PREFIX}HUB_DATABASE_URL", settings.hub_database_url)):
        if url and make_url(url).get_backend_name() == "postgresql":
            password = make_url(url).password
            refuse_weak_secret(f"the password in {url_name}", str(password or ""))
    if role == "hub":
        wanted = {
            "JPY_COOKIE_SECRET": "the hub's cookie secret",
            "CONFIGPROXY_AUTH_TOKEN": "the proxy's API token",
        }
        for name, what in wanted.items():
            value = environ.get(name, "")
            if not value:
                raise SettingsError(f"{name}: empty; {what} must come from the .env file "
                                    "(run 'dockyard init-prod')")
            refuse_weak_secret(name, value)
        if settings.admin_password is not None:
            refuse_weak_secret(f"{ENV_PREFIX}ADMIN_PASSWORD",
                               settings.admin_password.get_secret_value())
    if role == "web":
        refuse_weak_secret("JUPYTERHUB_API_TOKEN", environ.get("JUPYTERHUB_API_TOKEN", ""))
    for name in ("AWS_SECRET_ACCESS_KEY",):
        if environ.get(name):
            refuse_weak_secret(name, environ[name])


# -- the .env file -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvEntry:
    name: str
    help: str
    generate: str = ""  # "hex" | "password" | "prefix" | "" (a plain default)
    default: str = ""

    @property
    def secret(self) -> bool:
        return self.generate in ("hex", "password")


ENV_ENTRIES: tuple[EnvEntry, ...] = (
    EnvEntry("DOCKYARD_PUBLIC_URL", "The address people open (https://… behind your TLS proxy).",
             default="http://127.0.0.1:8000"),
    EnvEntry("DOCKYARD_HTTP_BIND", "Host address the hub's port is published on. Keep "
             "127.0.0.1 behind a reverse proxy on this machine.", default="127.0.0.1"),
    EnvEntry("DOCKYARD_HTTP_PORT", "Host port of the hub.", default="8000"),
    EnvEntry("DOCKER_GID", "Group owning /var/run/docker.sock on this machine (the hub and "
             "worker need it to start containers)."),
    EnvEntry("DOCKYARD_ADMIN_USER", "The first admin's user name.", default="admin"),
    EnvEntry("DOCKYARD_ADMIN_PASSWORD", "The first admin's password (used once, when the "
             "account is created; change it at /hub/change-password).", generate="password"),
    EnvEntry("DOCKYARD_COOKIE_SECRET", "JupyterHub's cookie secret (hex).", generate="hex"),
    EnvEntry("DOCKYARD_PROXY_TOKEN", "Token between JupyterHub and its proxy.", generate="hex"),
    EnvEntry("DOCKYARD_SERVICE_TOKEN", "API token of the Dockyard web service.",
             generate="hex"),
    EnvEntry("DOCKYARD_DB_PASSWORD", "PostgreSQL password of the 'dockyard' role.",
             generate="hex"),
    EnvEntry("DOCKYARD_S3_ACCESS_KEY", "Access key of the S3 store (MinIO root user).",
             generate="password"),
    EnvEntry("DOCKYARD_S3_SECRET_KEY", "Secret key of the S3 store.", generate="hex"),
    EnvEntry("DOCKYARD_S3_CLIENT_ACCESS_KEY", "Access key notebooks and jobs write data with "
             "(a store user that cannot delete).", generate="password"),
    EnvEntry("DOCKYARD_S3_CLIENT_SECRET_KEY", "Its secret key.", generate="hex"),
    EnvEntry("DOCKYARD_S3_BUCKET", "Bucket of the data catalog.", default="dockyard"),
    EnvEntry("DOCKYARD_DOCKER_NAME_PREFIX", "Prefix of this installation's notebook "
             "containers and home volumes, so that two installations can share one Docker "
             "engine. Never change it under a running installation: its users' homes are "
             "found by it.", generate="prefix", default="dockyard"),
)

_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def generate(kind: str) -> str:
    if kind == "hex":  # 256 bits; JupyterHub's cookie secret must be hex
        return secrets.token_hex(32)
    if kind == "prefix":  # Docker object names: short, lower case
        return f"dy{secrets.token_hex(3)}"
    if kind == "password":
        # Letters and digits only: safe in URLs, YAML and shells without quoting.
        alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        return "".join(secrets.choice(alphabet) for _ in range(24))
    raise ValueError(kind)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            values[match.group(1)] = match.group(2).strip("'\"")
    return values


def docker_socket_gid(socket_path: str = "/var/run/docker.sock") -> str:
    try:
        return str(os.stat(socket_path).st_gid)
    except OSError:
        return "0"


def render_env(values: dict[str, str]) -> str:
    lines = [
        "# Dockyard's docker compose settings and secrets, made by 'dockyard init-prod'.",
        "# Keep this file private (mode 600) and out of version control; back it up with",
        "# the database, because the secrets in it encrypt and sign what the database holds.",
        "",
    ]
    known = {entry.name for entry in ENV_ENTRIES}
    for entry in ENV_ENTRIES:
        lines.append(f"# {entry.help}")
        lines.append(f"{entry.name}={values[entry.name]}")
    extra = sorted(name for name in values if name not in known)
    if extra:
        lines += ["", "# Added by hand"]
        lines += [f"{name}={values[name]}" for name in extra]
    return "\n".join(lines) + "\n"


def write_env_file(path: Path, overrides: dict[str, str] | None = None) -> tuple[list[str], bool]:
    """Create or complete ``path``: existing values are kept (so secrets never change
    under a running installation), missing ones generated. Returns (names added, created)."""
    created = not path.exists()
    values = read_env_file(path)
    added: list[str] = []
    for name, value in (overrides or {}).items():
        if values.get(name) != value:
            values[name] = value
            added.append(name)
    for entry in ENV_ENTRIES:
        if values.get(entry.name):
            continue
        if entry.generate == "prefix" and not created:
            # An installation made before this entry existed keeps the names it has.
            values[entry.name] = entry.default
        elif entry.generate:
            values[entry.name] = generate(entry.generate)
        elif entry.name == "DOCKER_GID":
            values[entry.name] = docker_socket_gid()
        else:
            values[entry.name] = entry.default
        added.append(entry.name)
    for entry in ENV_ENTRIES:
        if entry.secret:
            refuse_weak_secret(f"{entry.name} in {path}", values[entry.name])
    # Written to a new file with mode 600 from the first byte, then moved into place.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_env(values))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return added, created


def ensure_build_ca(images_dir: Path, bundle: Path | None) -> bool:
    """Put the extra CA bundle where the Dockerfiles expect it (images/build-ca.crt), for
    ``docker compose build``: the given bundle, else the host's, else an empty file.
    Returns True when the file was made, False when one was already there."""
    target = images_dir / "build-ca.crt"
    if target.exists():
        return False
    from spawner.images.build import read_build_ca

    target.write_bytes(read_build_ca(bundle))
    return True

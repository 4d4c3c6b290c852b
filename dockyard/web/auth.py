"""Who is asking: JupyterHub tokens for the API, HubOAuth single sign-on for pages.

The web app never checks passwords. A browser is sent through the hub's OAuth flow and
comes back with a hub token kept in Dockyard's signed, HttpOnly session cookie; API
clients send a hub token (or a run-scoped token) in the Authorization header.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Protocol, TypeVar

from flask import abort, current_app, g, redirect, request, session

from dockyard.jobs.tokens import TokenRun

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False
    # Set when the caller is a job using its run-scoped token.
    run_id: int | None = None


class Identity(Protocol):
    """Turns tokens into users and runs the login flow. HubIdentity is the real one;
    tests of the web app alone may pass a table of tokens."""

    def user_for_token(self, token: str) -> User | None: ...

    def login_redirect(self, next_url: str) -> Any: ...

    def finish_login(self, code: str, state: str | None) -> tuple[str, str]:
        """Exchange an OAuth code for (token, next_url); raise PermissionError if bad."""
        ...


class HubIdentity:
    """JupyterHub's HubOAuth, configured from the environment the hub gives services."""

    def __init__(self, cache_max_age: int = 60) -> None:
        from jupyterhub.services.auth import HubOAuth

        self.oauth = HubOAuth(cache_max_age=cache_max_age)

    def user_for_token(self, token: str) -> User | None:
        try:
            model = self.oauth.user_for_token(token, use_cache=True)
        except Exception as exc:  # the hub is down or answered oddly: not this user's fault
            log.warning("Token check against the hub failed: %s", exc)
            abort(503, "The hub did not answer; try again in a moment.")
        if not model or model.get("kind", "user") != "user":
            return None
        if not self.oauth.check_scopes(self.oauth.access_scopes, model):
            return None
        return User(name=model["name"], admin=bool(model.get("admin")))

    def login_redirect(self, next_url: str) -> Any:
        state = self.oauth.generate_state(next_url=next_url)
        response = redirect(f"{self.oauth.login_url}&state={state}")
        response.set_cookie(
            self.oauth.state_cookie_name,
            state,
            httponly=True,
            samesite="Lax",
            # Secure like the session cookie when the public URL is https, even if TLS
            # ends at a proxy in front of the hub and this request came as plain http.
            secure=request.is_secure or bool(current_app.config.get("SESSION_COOKIE_SECURE")),
            path=self.oauth.base_url,
        )
        return response

    def finish_login(self, code: str, state: str | None) -> tuple[str, str]:
        cookie_state = request.cookies.get(self.oauth.state_cookie_name)
        if not state or not cookie_state or not secrets.compare_digest(state, cookie_state):
            raise PermissionError("OAuth state does not match; start the login again.")
        token = self.oauth.token_for_code(code)
        next_url = self.oauth.get_next_url(cookie_state) or ""
        return token, next_url


RunTokenLookup = Callable[[str], TokenRun | None]


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


def current_user() -> User | None:
    """The caller of this request, looked up once."""
    if "user" in g:
        return g.user
    user: User | None = None
    token = bearer_token()
    g.token_auth = token is not None
    if token is not None:
        run_tokens: RunTokenLookup | None = current_app.extensions.get("dockyard.run_tokens")
        held_by = run_tokens(token) if run_tokens else None
        if held_by is not None:
            user = User(name=held_by.owner, admin=False, run_id=held_by.run_id)
        if user is None:
            user = current_app.extensions["dockyard.identity"].user_for_token(token)
    elif session.get("token"):
        user = current_app.extensions["dockyard.identity"].user_for_token(session["token"])
        if user is None:
            session.pop("token", None)
    g.user = user
    return user


def page_login_required(view: F) -> F:
    """Pages: a visitor without a session goes through the hub's login."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            # script_root is the service prefix the app is mounted under.
            next_url = (request.script_root + request.full_path).rstrip("?")
            return current_app.extensions["dockyard.identity"].login_redirect(next_url)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def api_login_required(view: F) -> F:
    """API: no valid token or session means 401 JSON, never a redirect."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            abort(401, "Send a JupyterHub token: 'Authorization: token <TOKEN>'.")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require_admin() -> User:
    user = current_user()
    if user is None:
        abort(401)
    if not user.admin:
        abort(403, "Only Dockyard admins may do this.")
    return user

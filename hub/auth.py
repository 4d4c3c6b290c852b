"""Login for Dockyard: NativeAuthenticator, with the first admin created at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import DiscardHandler as NativeDiscardHandler
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.handlers import (
    ToggleAuthorizationHandler as NativeToggleAuthorizationHandler,
)
from nativeauthenticator.orm import UserInfo
from tornado.escape import url_escape
from tornado.httputil import url_concat
from tornado.web import HTTPError
from traitlets import Unicode


class DockyardLoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login form, fitted to JupyterHub 6's handler API.

    NativeAuthenticator 1.3 still calls the hub's removed statsd client on POST and
    its ``_render`` cannot take the ``sync`` flag JupyterHub 6 passes when it shows a
    login error, which turned every login into a 500. The page and the messages stay
    NativeAuthenticator's own.
    """

    def _render(
        self,
        login_error: str | None = None,
        username: str | None = None,
        sync: bool = False,
        **_ignored: Any,
    ) -> Any:
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
            xsrf=self.xsrf_token.decode("ascii"),
        )

    async def post(self) -> None:
        data = {
            arg: self.get_argument(arg, strip=arg == "username")
            for arg in self.request.body_arguments
            if arg != "_xsrf"
        }
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        username = data.get("username", "")
        error = "Invalid username or password."
        info = self.authenticator.get_user(username) if username else None
        if (
            info is not None
            and not info.is_authorized
            and info.is_valid_password(data.get("password", ""))
        ):
            error = f"User {username} has not been approved by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username))


class _PostOnly:
    """Approving or discarding a sign-up changes state, so it takes a POST with the
    hub's XSRF token; NativeAuthenticator does it on a plain GET link, which any page
    could make an admin's browser follow."""

    async def get(self, *_args: Any) -> None:
        raise HTTPError(405, "Use the buttons on the authorization page.")


class ApproveSignupHandler(_PostOnly, NativeToggleAuthorizationHandler):
    async def post(self, username: str) -> None:
        await NativeToggleAuthorizationHandler.get(self, username)


class DiscardSignupHandler(_PostOnly, NativeDiscardHandler):
    async def post(self, username: str) -> None:
        await NativeDiscardHandler.get(self, username)


_REPLACED_HANDLERS = {
    "/login": DockyardLoginHandler,
    "/authorize/([^/]*)": ApproveSignupHandler,
    "/discard/([^/]*)": DiscardSignupHandler,
}


class DockyardAuthenticator(NativeAuthenticator):
    """Sign-up with admin approval, plus a first admin who can log in at once."""

    initial_admin_password = Unicode(
        "",
        config=True,
        help="Password given to the first admin when the account does not exist yet.",
    )
    admin_marker_file = Unicode(
        "",
        config=True,
        help="File written once the first admin exists, so the password is made only once.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ensure_initial_admin()

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        handlers = super().get_handlers(app)
        return [(path, _REPLACED_HANDLERS.get(path, handler)) for path, handler in handlers]

    def ensure_initial_admin(self) -> None:
        for name in sorted(self.admin_users):
            if self.user_exists(name):
                continue
            if not self.initial_admin_password:
                self.log.warning("Admin %s has no account and no initial password is set", name)
                continue
            # Written directly: create_user() would refuse a password NativeAuthenticator
            # finds weak and a closed sign-up, but the operator chose this one explicitly.
            hashed = bcrypt.hashpw(self.initial_admin_password.encode(), bcrypt.gensalt())
            self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
            self.db.commit()
            self.log.info("Created the first admin account %r", name)
        if self.admin_marker_file:
            Path(self.admin_marker_file).touch(mode=0o600, exist_ok=True)

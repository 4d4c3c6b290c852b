"""Login for Dockyard: NativeAuthenticator, with the first admin created at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.orm import UserInfo
from traitlets import Unicode


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

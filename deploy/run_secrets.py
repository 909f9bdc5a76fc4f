"""The secrets a local stack keeps in its run dir, and the variables that carry secrets to one process only.

Each file is generated once (mode 0600) and kept, unless the operator gives the value or a file of their own; the
harness (deploy/stack.py) hands each to the one service that needs it. Used by `make run`, the tests and bench/.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

# The auth service's key-encryption key (its signing keys are stored encrypted under it): given to auth only.
KEK_VARIABLES = ("ITSM_AUTH_KEK", "ITSM_AUTH_KEK_FILE", "ITSM_AUTH_KEK_PREVIOUS")
# The webhook service's key of the subscriptions' signing secrets (stored encrypted under it): given to webhook only.
WEBHOOK = "webhook"
WEBHOOK_KEY_VARIABLES = ("ITSM_WEBHOOK_SECRET_KEY", "ITSM_WEBHOOK_SECRET_KEY_FILE")
# The audit service's anchor key (it signs its hash chain with it, README, Audit): given to audit only.
ANCHOR_VARIABLES = ("ITSM_AUDIT_ANCHOR_KEY", "ITSM_AUDIT_ANCHOR_KEY_FILE")
# Database credentials: ITSM_DB_APP_PASSWORD_<SERVICE>[_FILE] for that service's migration job, the password file
# of its own role for the service (itsm_shared.settings); the unsuffixed ITSM_DB_APP_PASSWORD is refused.
LEGACY_DB_APP_PASSWORD = "ITSM_DB_APP_PASSWORD"  # noqa: S105 (names of variables, not passwords)
DB_PASSWORD_FILE = "ITSM_DB_PASSWORD_FILE"  # noqa: S105


def secret_file(path: Path, make: Callable[[], str]) -> Path:
    """`path`, created once with `make()` (mode 0600) and kept."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path
        with os.fdopen(descriptor, "w") as file:
            file.write(make() + "\n")
    return path


def auth_kek_file(run_dir: Path) -> Path:
    """The KEK of the stack in `run_dir`, generated once (mode 0600) and kept there: the signing keys in that
    stack's database can only be read with it. Unless the operator gives ITSM_AUTH_KEK or ITSM_AUTH_KEK_FILE."""
    return secret_file(run_dir / "auth-kek", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def audit_anchor_key_file(run_dir: Path) -> Path:
    """The anchor key of the stack in `run_dir` (the audit service signs each batch of its chain with it), generated
    once (mode 0600) and kept there, given to the audit service only. Unless the operator gives
    ITSM_AUDIT_ANCHOR_KEY or ITSM_AUDIT_ANCHOR_KEY_FILE."""
    return secret_file(run_dir / "audit-anchor-key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def db_password_file(run_dir: Path, service: str) -> Path:
    """The password of `<service>_app` in the stack of `run_dir`: one per service, generated once (mode 0600) and
    kept there, given to that service's migration job (which sets it) and to that service only. Unless the
    operator gives ITSM_DB_APP_PASSWORD_<SERVICE> or ITSM_DB_APP_PASSWORD_<SERVICE>_FILE."""
    return secret_file(run_dir / f"db-password-{service}", lambda: secrets.token_urlsafe(32))


def is_db_credential(variable: str) -> bool:
    """A variable carrying some service role's database password (each is given to one process at most)."""
    return variable.startswith(LEGACY_DB_APP_PASSWORD) or variable == DB_PASSWORD_FILE


def webhook_secret_key_file(run_dir: Path) -> Path:
    """The key of the webhook signing secrets of the stack in `run_dir`, generated once (mode 0600) and kept there.
    Unless the operator gives ITSM_WEBHOOK_SECRET_KEY or ITSM_WEBHOOK_SECRET_KEY_FILE."""
    return secret_file(
        run_dir / "webhook-secret-key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    )

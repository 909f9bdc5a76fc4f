"""security hardening (issue #11): login throttling per account and address, encrypted signing keys, versioned
service clients

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00

The account lock (`failed_logins`, `locked_until`) gives way to `login_throttle`. Signing keys get
`private_key_encrypted`; `private_pem` becomes nullable and is cleared by the service itself: a migration job
is not given the key-encryption key (only the running auth service is), so rows written before this revision
are encrypted, and their clear copy removed, when the service first starts with its KEK (auth.keys.prepare_keys).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("account_key", sa.String(length=64), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("account_key", "client_address"),
    )
    op.create_index("ix_login_throttle_last_failure_at", "login_throttle", ["last_failure_at"], unique=False)
    op.drop_column("user_account", "locked_until")
    op.drop_column("user_account", "failed_logins")
    op.add_column("signing_key", sa.Column("private_key_encrypted", sa.Text(), nullable=True))
    op.alter_column("signing_key", "private_pem", existing_type=sa.Text(), nullable=True)
    op.add_column(
        "service_client",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.add_column("service_client", sa.Column("version", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    op.drop_column("service_client", "version")
    op.drop_column("service_client", "updated_at")
    # An encrypted key cannot be written back in clear here (no KEK): a downgraded service starts with a new key.
    op.execute("DELETE FROM signing_key WHERE private_pem IS NULL")
    op.alter_column("signing_key", "private_pem", existing_type=sa.Text(), nullable=False)
    op.drop_column("signing_key", "private_key_encrypted")
    op.add_column("user_account", sa.Column("failed_logins", sa.Integer(), server_default="0", nullable=False))
    op.add_column("user_account", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    op.drop_index("ix_login_throttle_last_failure_at", table_name="login_throttle")
    op.drop_table("login_throttle")

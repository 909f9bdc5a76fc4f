"""revoked subjects (issue #11, finding 6): access tokens of a client disabled, deleted, re-keyed or re-roled (and
of a user disabled, re-roled or with a new password) are refused by every service

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 10:00:00

One row per subject (a client's or user's id, as in the tokens' `sub`), with no foreign key: it outlives a deleted
client. `not_before` is in unix seconds; rows older than an access token's lifetime are deleted by the service.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revoked_subject",
        sa.Column("subject", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )
    op.create_index("ix_revoked_subject_not_before", "revoked_subject", ["not_before"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_revoked_subject_not_before", table_name="revoked_subject")
    op.drop_table("revoked_subject")

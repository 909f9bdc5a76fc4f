"""requester policy (issue #11, point 16): what becomes of the impact and urgency a requester gives

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 21:00:00

One row, admins change it at /api/v1/incidents/requester-policy. It starts as `cap` at P3, as ServiceNow's
self-service callers cannot raise a P1 or P2 themselves: an agent does, at triage. Incidents raised before it
keep their priority.
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
        "requester_policy",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("highest_priority", sa.SmallInteger(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_requester_policy_one_row"),
        sa.CheckConstraint("mode IN ('accept', 'cap', 'ignore')", name="ck_requester_policy_mode"),
        sa.CheckConstraint("highest_priority BETWEEN 1 AND 5", name="ck_requester_policy_highest_priority"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO requester_policy (id, mode, highest_priority) VALUES (1, 'cap', 3)")


def downgrade() -> None:
    op.drop_table("requester_policy")

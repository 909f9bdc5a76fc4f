"""standard-change templates (issue #11, point 9): the catalogue of pre-approved changes, and the template each
standard change was raised from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 20:00:00

Standard changes raised before this revision keep `standard_template_id` NULL, as a change manager's would.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "standard_change_template",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("implementation_plan", sa.Text(), nullable=False),
        sa.Column("backout_plan", sa.Text(), nullable=False),
        sa.Column("test_plan", sa.Text(), nullable=True),
        sa.Column("configuration_items", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("active", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_standard_change_template_created", "standard_change_template", ["created_at", "id"], unique=False
    )
    op.add_column("change_request", sa.Column("standard_template_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        "change_request_standard_template_id_fkey",
        "change_request",
        "standard_change_template",
        ["standard_template_id"],
        ["id"],
    )
    op.create_index("ix_change_request_template", "change_request", ["standard_template_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_change_request_template", table_name="change_request")
    op.drop_constraint("change_request_standard_template_id_fkey", "change_request", type_="foreignkey")
    op.drop_column("change_request", "standard_template_id")
    op.drop_index("ix_standard_change_template_created", table_name="standard_change_template")
    op.drop_table("standard_change_template")

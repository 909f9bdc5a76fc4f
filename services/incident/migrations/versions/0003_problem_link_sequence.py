"""problem_link by problem and sequence (issue #11, finding 2): a new link's sequence is bounded by the highest
applied of its problem's links, found through this index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_problem_link_problem_sequence", "problem_link", ["problem_id", "sequence"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_problem_link_problem_sequence", table_name="problem_link")

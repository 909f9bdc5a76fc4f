"""audit anchors (issue #11, finding 15): each batch of the chain signed with a key the database does not hold

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00

`audit_anchor` is append-only like the other two tables: the service's role may read and append it, and the
triggers of 0001 refuse UPDATE, DELETE and TRUNCATE. The migration job is not given the anchor key, so it signs
nothing: records stored before this revision are covered by no anchor until the service, started once with
ITSM_AUDIT_ANCHOR_ADOPT_THROUGH, signs them (README, Audit).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from itsm_shared.provision import app_role

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP = app_role("audit")
TABLE = "audit_anchor"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("from_seq", sa.BigInteger(), nullable=False),
        sa.Column("kid", sa.String(length=16), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.execute(f"REVOKE ALL ON {TABLE} FROM PUBLIC")
    op.execute(f'REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {TABLE} FROM "{APP}"')
    op.execute(f'GRANT SELECT, INSERT ON {TABLE} TO "{APP}"')
    op.execute(f"""CREATE TRIGGER {TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE}
                   FOR EACH ROW EXECUTE FUNCTION audit_append_only()""")
    op.execute(f"""CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
                   FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER {TABLE}_no_truncate ON {TABLE}")
    op.execute(f"DROP TRIGGER {TABLE}_no_change ON {TABLE}")
    op.drop_table(TABLE)

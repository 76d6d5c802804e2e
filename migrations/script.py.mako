"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}
# The oldest release (by its newest revision) that still runs on this revision's schema: the
# down_revision when this migration only adds; this revision when older code would break on it.
compatible_with = ${repr(down_revision)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    ${downgrades if downgrades else "pass"}

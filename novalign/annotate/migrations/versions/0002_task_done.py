"""tasks.done: a task whose k slots are all submitted is skipped by routing without counting its assignments

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (SQLite has it): batch mode would copy the table, which its foreign keys forbid
    op.add_column("tasks", sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_tasks_open", "tasks", ["project_id", "done", "id"])
    # tasks already full when this migration runs
    op.execute("UPDATE tasks SET done = (SELECT COUNT(*) FROM assignments a WHERE a.task_id = tasks.id "
               "AND a.status = 'submitted') >= (SELECT overlap FROM projects p WHERE p.id = tasks.project_id)")


def downgrade() -> None:
    op.drop_index("ix_tasks_open", table_name="tasks")
    op.drop_column("tasks", "done")  # SQLite >= 3.35 drops a column in place

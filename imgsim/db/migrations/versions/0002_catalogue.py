"""Collections, models and index versions; images gain storage, metadata and updated_at.

Existing images keep their ids; a collection row is created for every collection name in use.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.String(1024), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.execute("INSERT INTO collections (name, description) "
               "SELECT DISTINCT collection, '' FROM images")
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("storage", sa.String(16), nullable=False, server_default="file"))
        batch.add_column(sa.Column("metadata", sa.JSON, nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("fk_images_collection", "collections", ["collection"], ["name"])
    op.execute("UPDATE images SET metadata = '{}', updated_at = created_at")
    with op.batch_alter_table("images") as batch:
        batch.alter_column("metadata", existing_type=sa.JSON, nullable=False)
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "index_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("collection", sa.String(128),
                  sa.ForeignKey("collections.name", name="fk_index_versions_collection"),
                  nullable=False),
        sa.Column("model_id", sa.Integer,
                  sa.ForeignKey("models.id", name="fk_index_versions_model"), nullable=True),
        sa.Column("factory", sa.String(256), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("recall_at_10", sa.Float, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("build_seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_index_versions_collection", "index_versions", ["collection"])


def downgrade() -> None:
    op.drop_index("ix_index_versions_collection", "index_versions")
    op.drop_table("index_versions")
    op.drop_table("models")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("fk_images_collection", type_="foreignkey")
        batch.drop_column("updated_at")
        batch.drop_column("metadata")
        batch.drop_column("storage")
    op.drop_table("collections")

"""The catalogue on both supported databases (SQLite and a real PostgreSQL server)."""

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    column,
    insert,
    inspect,
    select,
    table,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from imgsim.db.migrate import (
    current_revision,
    downgrade_catalog,
    head_revision,
    include_object,
    upgrade_catalog,
)
from indexer.catalog import (
    Base,
    CollectionRow,
    ImageRow,
    IndexVersionRow,
    all_images,
    collections,
    count_images,
    duplicate_groups,
    image_by_key,
    images_by_sha256,
    index_versions,
    make_engine,
    open_catalog,
    record_index_version,
    register_model,
    set_index_version_state,
    upsert_images,
)
from service.auth import ApiKeyRow, create_api_key, list_api_keys  # migrated here too (0004)
from service.jobs.store import JobRow, open_job_store  # its table is migrated here too (0003)


def _row(key, sha="0", **kw):
    return {"key": key, "path": f"/img/{key}.jpg", "label": key[:1], "sha256": sha * 64, **kw}


def test_migrated_schema_is_exactly_the_models(catalog_url):
    """Alembic's autogenerate finds nothing to do: the migrations build what the ORM declares."""
    open_catalog(catalog_url)
    engine = make_engine(catalog_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()
    assert "jobs" in Base.metadata.tables and "jobs" in inspect(engine).get_table_names()
    assert "api_keys" in inspect(engine).get_table_names()


def test_api_keys_table_made_by_create_all_is_adopted_keeping_its_keys(catalog_url):
    """Before 0004 the service made ``api_keys`` with create_all on start: upgrading keeps
    the keys, and a catalogue migrated to 0003 gets the table from 0004."""
    engine = make_engine(catalog_url)
    upgrade_catalog(engine, "0003")
    assert "api_keys" not in inspect(engine).get_table_names()
    ApiKeyRow.metadata.create_all(engine, tables=[ApiKeyRow.__table__])
    Session = sessionmaker(engine)
    with Session.begin() as s:
        create_api_key(s, name="app", access="read", collections=["faces"])
    upgrade_catalog(engine)
    assert current_revision(engine) == head_revision()
    with Session() as s:
        assert [k.name for k in list_api_keys(s)] == ["app"]
    downgrade_catalog(engine, "0003")
    assert "api_keys" not in inspect(engine).get_table_names()
    upgrade_catalog(engine)
    assert "api_keys" in inspect(engine).get_table_names()


def test_foundation_era_catalogue_is_upgraded_keeping_ids(catalog_url):
    engine = make_engine(catalog_url)
    upgrade_catalog(engine, "0001")  # the schema the foundation created, with data in it
    images = table("images", column("id"), column("collection"), column("key"), column("path"),
                   column("label"), column("sha256"), column("created_at"))
    with engine.begin() as conn:
        conn.execute(insert(images), [
            {"id": 7, "collection": "faces", "key": "a/1", "path": "/a1", "label": "a",
             "sha256": "1" * 64, "created_at": datetime(2024, 1, 1, tzinfo=UTC)},
            {"id": 9, "collection": "birds", "key": "b/1", "path": "/b1", "label": "b",
             "sha256": "2" * 64, "created_at": datetime(2024, 1, 2, tzinfo=UTC)}])
    Session = open_catalog(catalog_url)
    with Session() as s:
        assert [c.name for c in collections(s)] == ["birds", "faces"]
        row = image_by_key(s, "a/1", collection="faces")
        assert (row.id, row.path, row.storage, row.meta) == (7, "/a1", "file", {})
        assert row.updated_at.replace(tzinfo=None) == row.created_at.replace(tzinfo=None)
    # and back down: 0001 keeps the images, drops the new tables
    downgrade_catalog(engine, "0001")
    names = set(inspect(engine).get_table_names())
    assert "images" in names and not names & {"collections", "models", "index_versions"}
    upgrade_catalog(engine)
    with open_catalog(catalog_url)() as s:
        assert image_by_key(s, "b/1", collection="birds").id == 9


def test_catalogue_created_by_create_all_is_stamped_then_upgraded(tmp_path):
    """The foundation made its schema with create_all and no alembic_version table."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade_catalog(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    assert current_revision(engine) is None
    open_catalog(url)
    assert current_revision(engine) == head_revision()


def test_key_is_unique_per_collection_and_collections_must_exist(catalog_url):
    Session = open_catalog(catalog_url)
    with Session.begin() as s:
        upsert_images(s, [_row("a")], collection="c1")
        upsert_images(s, [_row("a")], collection="c2")  # same key, other collection: fine
    with pytest.raises(IntegrityError):
        with Session.begin() as s:
            s.add(ImageRow(collection="c1", **_row("a")))
    with pytest.raises(IntegrityError):  # foreign key: images belong to a known collection
        with Session.begin() as s:
            s.add(ImageRow(collection="nowhere", **_row("z")))
            s.flush()


def test_upsert_updates_in_place_and_keeps_json_metadata(catalog_url):
    Session = open_catalog(catalog_url)
    meta = {"source": "camera-3", "boxes": [[1, 2, 3, 4]], "score": 0.5, "ok": True}
    with Session.begin() as s:
        (first,) = upsert_images(s, [_row("k", meta=meta)], collection="c")
    with Session.begin() as s:
        (again,) = upsert_images(s, [_row("k", sha="f", label="new", storage="blob")],
                                 collection="c")
    with Session() as s:
        row = image_by_key(s, "k", collection="c")
        assert row.id == first.id == again.id
        assert (row.label, row.sha256, row.storage, row.meta) == ("new", "f" * 64, "blob", meta)
        assert row.updated_at >= row.created_at
        assert count_images(s, collection="c") == 1
    with pytest.raises(ValueError, match="storage"):
        with Session.begin() as s:
            upsert_images(s, [_row("x", storage="s3")], collection="c")


def test_duplicates_are_found_by_content_hash(catalog_url):
    Session = open_catalog(catalog_url)
    with Session.begin() as s:
        upsert_images(s, [_row("a", "1"), _row("b", "2"), _row("c", "1"), _row("d", "1")],
                      collection="c")
        upsert_images(s, [_row("e", "1")], collection="other")
    with Session() as s:
        assert [r.key for r in images_by_sha256(s, "1" * 64, collection="c")] == ["a", "c", "d"]
        assert len(images_by_sha256(s, "1" * 64, collection=None)) == 4
        assert duplicate_groups(s, collection="c") == {"1" * 64: ["a", "c", "d"]}
        assert [r.key for r in all_images(s, collection="c")] == ["a", "b", "c", "d"]


def test_models_and_index_versions(catalog_url):
    Session = open_catalog(catalog_url)
    with Session.begin() as s:
        m = register_model(s, checkpoint_sha256="a" * 64, name="r18", spec={"arch": "resnet18"},
                           metrics={"recall@1": 0.7}, threshold=0.9)
        again = register_model(s, checkpoint_sha256="a" * 64)
        assert again.id == m.id and again.threshold == 0.9 and again.spec == {"arch": "resnet18"}
        record_index_version(s, name="v1", collection="faces", factory="IVF64,Flat",
                             model_id=m.id, params={"nprobe": 4}, count=10, recall_at_10=0.97,
                             path="/idx/v1", build_seconds=1.5)
        record_index_version(s, name="v2", collection="faces", factory="Flat", model_id=m.id,
                             params={}, count=11, recall_at_10=1.0, path="/idx/v2",
                             build_seconds=0.1, state="building")
    with Session.begin() as s:
        set_index_version_state(s, "v1", "retired")
        set_index_version_state(s, "v2", "published")
    with Session() as s:
        rows = index_versions(s, collection="faces")
        assert [(r.name, r.state, r.params) for r in rows] == [
            ("v1", "retired", {"nprobe": 4}), ("v2", "published", {})]
        assert s.scalars(select(CollectionRow.name)).all() == ["faces"]
    with Session.begin() as s:  # publishing a version retires the collection's current one
        record_index_version(s, name="v3", collection="faces", factory="Flat", model_id=m.id,
                             params={}, count=12, recall_at_10=1.0, path="/idx/v3",
                             build_seconds=0.1)
    with Session() as s:
        assert [(r.name, r.state) for r in index_versions(s)] == [
            ("v1", "retired"), ("v2", "retired"), ("v3", "published")]
    with pytest.raises(IntegrityError):  # an index version names a real model
        with Session.begin() as s:
            s.add(IndexVersionRow(name="v3", collection="faces", factory="Flat", model_id=12345,
                                  params={}, count=0, state="failed", path="", build_seconds=0))
            s.flush()
    with pytest.raises(ValueError, match="state"):
        with Session.begin() as s:
            set_index_version_state(s, "v1", "lost")


def _columns(engine, name):
    return {c["name"]: c["nullable"] for c in inspect(engine).get_columns(name)}


def test_jobs_table_is_created_by_revision_0003(catalog_url):
    """From 0002 to head the migrations create ``jobs`` exactly as JobRow declares it."""
    engine = make_engine(catalog_url)
    upgrade_catalog(engine, "0002")
    assert "jobs" not in inspect(engine).get_table_names()
    upgrade_catalog(engine)
    model = {c.name: c.nullable for c in JobRow.__table__.columns}
    assert _columns(engine, "jobs") == model
    assert {"started_at", "finished_at", "heartbeat_at"} == {n for n, null in model.items()
                                                             if null and n != "id"}
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("jobs")}
    assert indexes == {ix.name: [c.name for c in ix.columns] for ix in JobRow.__table__.indexes}
    assert indexes == {"ix_jobs_kind": ["kind"], "ix_jobs_state": ["state"]}
    downgrade_catalog(engine, "0002")
    assert "jobs" not in inspect(engine).get_table_names()


def _create_all_era_jobs_table(engine) -> Table:
    """The ``jobs`` table as the job store's create_all made it before 0003 (no heartbeat)."""
    meta = MetaData()
    jobs = Table(
        "jobs", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(64), nullable=False, index=True),
        Column("state", String(16), nullable=False, index=True),
        Column("params", JSON, nullable=False), Column("progress", Float, nullable=False),
        Column("message", String(1024), nullable=False), Column("error", Text, nullable=False),
        Column("artifacts", JSON, nullable=False),
        Column("cancel_requested", Boolean, nullable=False),
        Column("worker", String(128), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=True),
        Column("finished_at", DateTime(timezone=True), nullable=True))
    meta.create_all(engine)
    return jobs


def test_jobs_table_made_by_create_all_is_adopted_keeping_its_rows(catalog_url):
    engine = make_engine(catalog_url)
    upgrade_catalog(engine, "0002")
    jobs = _create_all_era_jobs_table(engine)
    with engine.begin() as conn:
        conn.execute(insert(jobs), [{
            "id": 41, "kind": "tsne", "state": "succeeded", "params": {"perplexity": 5.0},
            "progress": 1.0, "message": "done", "error": "", "artifacts": [],
            "cancel_requested": False, "worker": "h:1",
            "created_at": datetime(2025, 1, 1, tzinfo=UTC)}])
    Session = open_job_store(catalog_url)  # migrates to head: 0003 finds the table there
    assert current_revision(engine) == head_revision()
    assert "heartbeat_at" in _columns(engine, "jobs")
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(ctx, Base.metadata) == []
    with Session() as s:
        row = s.get(JobRow, 41)
        assert (row.kind, row.state, row.params, row.heartbeat_at) == (
            "tsne", "succeeded", {"perplexity": 5.0}, None)

-- Core registry metadata. Written in the SQL that SQLite and PostgreSQL share, so the
-- PostgreSQL migration differs only in identity columns and the BLOB/BYTEA type.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- Every blob whose bytes are durable in the blob store, whatever repository holds it.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Which repositories may serve a blob (pushed or mounted there).
CREATE TABLE repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest        TEXT NOT NULL REFERENCES blobs(digest),
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_by_digest ON repository_blobs (digest);

-- Manifests keep their exact bytes: reads by tag or digest never touch blob storage.
CREATE TABLE manifests (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    size          BIGINT NOT NULL,
    content       BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository_id, subject);

-- What each manifest points at: kind 'blob' (config, layers) or 'manifest' (index
-- children). Garbage collection, quotas and retention are queries over this table.
CREATE TABLE manifest_references (
    repository_id   BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    target_digest   TEXT NOT NULL,
    kind            TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, kind, target_digest)
);
CREATE INDEX manifest_references_by_target ON manifest_references (target_digest, kind);

CREATE TABLE tags (
    repository_id   BIGINT NOT NULL REFERENCES repositories(id),
    name            TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_by_manifest ON tags (repository_id, manifest_digest);

-- Upload sessions: `size` is what the spool holds durably, nothing more.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    repository  TEXT NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX uploads_by_updated ON uploads (updated_at);

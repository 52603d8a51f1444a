-- Online garbage collection (docs/architecture.md, "Garbage collection").

-- A writer about to publish bytes at a content address (an upload completing, a
-- manifest's copy) holds the digest against collection until the commit that records
-- them. The commit deletes its own hold and fails if the hold is gone (expired).
CREATE TABLE blob_holds (
    owner       TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX blob_holds_by_digest ON blob_holds (digest);

-- Committed decisions to delete a digest's bytes, kept until the bytes are gone. While
-- one exists, no writer may hold the digest: its bytes could vanish under it.
CREATE TABLE blob_deletions (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    decided_at  BIGINT NOT NULL
);

-- Objects a storage listing found with no row in `blobs` (a crash between publish and
-- commit), with when they were first seen. A listing only nominates: the decision comes
-- a grace period later, from the database.
CREATE TABLE blob_orphans (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL
);

-- Which manifests hold a digest, in any repository: a manifest's bytes are also kept
-- at its content address, and collection asks this before deleting them.
CREATE INDEX manifests_by_digest ON manifests (digest);

-- Links unreferenced for a grace period are collected oldest first.
CREATE INDEX repository_blobs_by_created ON repository_blobs (created_at);

-- Every object at a content address has a row in `blobs`, manifests' copies included.
INSERT INTO blobs (digest, size, created_at)
    SELECT digest, max(size), min(created_at) FROM manifests GROUP BY digest
    ON CONFLICT (digest) DO NOTHING;

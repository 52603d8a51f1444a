-- Tag immutability rules. A rule covers the tags matching `tags` (and none of the
-- patterns of the JSON array `except_tags`) in the repositories of `namespace` whose
-- rest of name matches `repositories`. Level `move`: such a tag cannot be moved to
-- another manifest; `delete`: nor deleted. `signatures`: whether signature and
-- attestation tags (`sha256-<hex>.sig`, `.att`, `.sbom`) are covered too. `declared`:
-- the rule comes from the configuration file, which replaces all declared rules at
-- start-up.
CREATE TABLE immutability_rules (
    id           INTEGER PRIMARY KEY,
    namespace    TEXT NOT NULL,
    repositories TEXT NOT NULL,
    tags         TEXT NOT NULL,
    except_tags  TEXT NOT NULL,
    level        TEXT NOT NULL,
    signatures   INTEGER NOT NULL,
    declared     INTEGER NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX immutability_rules_by_namespace ON immutability_rules (namespace);

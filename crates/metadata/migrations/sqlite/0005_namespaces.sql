-- Authorization: namespaces with members and roles, teams, robot accounts, and the
-- audit log. Names are compared byte-wise (COLLATE "C" on PostgreSQL, SQLite's
-- default), because a namespace's repositories are the key range of its name + '/'.

-- Robots are users whose name starts with `robot$`, with an expiry; a person has none.
ALTER TABLE users ADD COLUMN expires_at BIGINT;

-- A namespace is the first `berth.auth.namespacedepth` components of repository names.
-- `public` lets anyone, signed in or not, pull its repositories.
CREATE TABLE namespaces (
    name       TEXT NOT NULL PRIMARY KEY,
    public     INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE teams (
    name       TEXT NOT NULL PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- Members of a team are user names: people of htpasswd, LDAP or OIDC need no row in
-- `users`.
CREATE TABLE team_members (
    team   TEXT NOT NULL REFERENCES teams(name) ON DELETE CASCADE,
    member TEXT NOT NULL,
    PRIMARY KEY (team, member)
);
CREATE INDEX team_members_by_member ON team_members (member);

-- kind 'user' (people and robots) or 'team'; role reader, developer, maintainer, admin.
CREATE TABLE namespace_members (
    namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
    kind      TEXT NOT NULL,
    member    TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (namespace, kind, member)
);
CREATE INDEX namespace_members_by_member ON namespace_members (kind, member);

-- Every change and every refusal, written in the transaction of the change it records.
CREATE TABLE audit_events (
    id     INTEGER PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_events_by_actor ON audit_events (actor, id);
CREATE INDEX audit_events_by_action ON audit_events (action, id);

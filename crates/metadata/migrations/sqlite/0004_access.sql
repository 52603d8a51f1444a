-- People who sign in with a password kept here (argon2id, PHC string). Users of an
-- htpasswd file, LDAP or OIDC are not stored unless they are given roles.
CREATE TABLE users (
    name          TEXT NOT NULL PRIMARY KEY,
    password_hash TEXT,
    admin         INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

-- Keys of the built-in token service, shared by every instance: the newest signs, all
-- that are not retired verify (and are published in the JWKS), so a rotation never
-- invalidates tokens already handed out.
CREATE TABLE signing_keys (
    kid         TEXT NOT NULL PRIMARY KEY,
    private_pem TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

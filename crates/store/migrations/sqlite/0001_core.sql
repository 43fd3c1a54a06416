-- Core tables of the platform: users, their bearer tokens, sites,
-- releases and the edge's route table.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    created_at    INTEGER NOT NULL
);

-- Only the SHA-256 of a token is stored: a leaked database does not hand
-- out live sessions.
CREATE TABLE tokens (
    token_hash TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL CHECK (kind IN ('access', 'refresh')),
    family     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    -- A rotated refresh token is kept, marked used, so that a replay of it
    -- is recognised and ends the whole session.
    used       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE sites (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    domain         TEXT    NOT NULL UNIQUE,
    kind           TEXT    NOT NULL CHECK (kind IN ('static', 'proxy', 'process', 'balancer')),
    -- NULL: created by the server itself (the demo), not by a user.
    owner_id       INTEGER REFERENCES users (id) ON DELETE SET NULL,
    upstream       TEXT,
    -- A balancer's upstreams, strategy and health check, as JSON.
    balancer       TEXT,
    spa            INTEGER NOT NULL DEFAULT 0,
    active_release TEXT,
    created_at     INTEGER NOT NULL
);

CREATE TABLE releases (
    id          TEXT    PRIMARY KEY,
    site_id     INTEGER NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    sha256      TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    file_count  INTEGER NOT NULL,
    created_by  INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX releases_site ON releases (site_id, id);

-- What the edge serves for each domain. Written in the same transaction
-- as the site change that causes it, and pushed to the edge after commit.
CREATE TABLE routes (
    domain     TEXT    PRIMARY KEY,
    site_id    INTEGER NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL CHECK (kind IN ('static', 'proxy', 'process', 'balancer')),
    release_id TEXT,
    upstream   TEXT,
    balancer   TEXT,
    spa        INTEGER NOT NULL DEFAULT 0
);

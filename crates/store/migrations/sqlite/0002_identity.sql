-- Identity and access: customers (tenants) own sites, users belong to a
-- customer, logins are sessions, automation uses API keys, access tokens
-- are signed with keys kept here, and failed logins are counted per
-- account so lockouts survive a restart.

CREATE TABLE customers (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    created_at INTEGER NOT NULL
);

-- NULL customer: a platform admin who belongs to no tenant.
ALTER TABLE users ADD COLUMN customer_id INTEGER REFERENCES customers (id);
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN display_name TEXT;
-- TOTP second factor: the shared secret (base32), the last accepted time
-- step (replay protection) and the SHA-256 hashes of unused recovery codes
-- as a JSON array.
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending TEXT;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
ALTER TABLE users ADD COLUMN recovery_codes TEXT;

-- The tenant that owns a site. Ownership checks read this column, never an
-- id from a request.
ALTER TABLE sites ADD COLUMN customer_id INTEGER REFERENCES customers (id);
UPDATE sites SET customer_id = (SELECT customer_id FROM users WHERE users.id = sites.owner_id);
CREATE INDEX sites_customer ON sites (customer_id);

-- One row per login. Refresh tokens of the session share its id as their
-- family. A browser session is found by the hash of its cookie.
CREATE TABLE sessions (
    id           TEXT    PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL CHECK (kind IN ('token', 'browser')),
    secret_hash  TEXT    UNIQUE,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    client_ip    TEXT,
    user_agent   TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Access tokens are signed JWTs now and are not stored; tokens issued by
-- the earlier opaque scheme have no session, so they end here.
DELETE FROM tokens;

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,
    key_hash     TEXT    NOT NULL UNIQUE,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    -- Permission names as a JSON array: a subset of the owner's.
    permissions  TEXT    NOT NULL,
    -- Site domains as a JSON array; NULL means every site the owner may use.
    sites        TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- Ed25519 keys that sign access tokens. Exactly one is active; the others
-- verify until `retired_at`, when the last token they signed has expired.
-- Limitation: the private key is stored unencrypted until the secrets
-- issue's envelope encryption lands.
CREATE TABLE signing_keys (
    kid         TEXT    PRIMARY KEY,
    private_key BLOB    NOT NULL,
    public_key  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    active      INTEGER NOT NULL DEFAULT 0,
    retired_at  INTEGER
);

-- Failed logins per email address (known or not, so that the lockout
-- itself tells nobody whether an account exists).
CREATE TABLE login_failures (
    subject      TEXT    PRIMARY KEY,
    failures     INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    locked_until INTEGER
);

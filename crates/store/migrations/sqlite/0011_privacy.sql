-- Privacy (issue 9): consent records with their history, and the
-- per-subject keys that encrypt personal fields of the audit log. Erasing
-- a user deletes its key row, which makes those fields unreadable for
-- good (crypto-shredding) while the audit chain, which covers the
-- ciphertext, still verifies.

-- One row per act of giving or withdrawing a consent; the newest row of a
-- (user, purpose) pair is the current state. Rows are never updated.
CREATE TABLE consents (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT    NOT NULL
               CHECK (purpose IN ('necessary', 'functional', 'analytics', 'marketing')),
    granted    INTEGER NOT NULL CHECK (granted IN (0, 1)),
    -- Seconds since the Unix epoch.
    time       INTEGER NOT NULL,
    -- Anonymised before it is stored (IPv4 /24, IPv6 /48).
    client_ip  TEXT,
    user_agent TEXT
);
CREATE INDEX consents_user ON consents (user_id, purpose, id);

-- The keys of audit subjects: `user:ID`, or `email:HMAC` for an address
-- that had no user when its event was written. Each key is wrapped
-- (AES-256-GCM) under a key kept outside the database.
CREATE TABLE audit_pii_keys (
    subject    TEXT    PRIMARY KEY,
    wrapped    BLOB    NOT NULL,
    -- Microseconds since the Unix epoch.
    created_at INTEGER NOT NULL
);

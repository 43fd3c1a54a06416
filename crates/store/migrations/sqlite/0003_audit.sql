-- The audit log: an append-only, HMAC-chained table of security events,
-- and the Ed25519-signed checkpoints over its head. The `audit` crate
-- writes both through its own connection; nothing else touches them.

CREATE TABLE audit_events (
    -- Position in the chain, 1, 2, 3, ... with no gaps.
    seq         INTEGER PRIMARY KEY,
    -- Microseconds since the Unix epoch, when the event happened.
    time        INTEGER NOT NULL,
    -- Event type, e.g. `auth.failed`, `site.deploy`.
    kind        TEXT    NOT NULL,
    actor_user  INTEGER,
    actor_role  TEXT,
    actor_key   TEXT,
    -- Anonymised by config (IPv4 /24, IPv6 /48) before it is stored.
    client_ip   TEXT,
    user_agent  TEXT,
    resource    TEXT,
    action      TEXT,
    result      TEXT    NOT NULL CHECK (result IN ('success', 'failure', 'denied')),
    request_id  TEXT,
    session_id  TEXT,
    -- The customer (tenant) the event concerns, for scoped reads.
    customer    TEXT,
    -- A JSON object; secrets are redacted before it is built.
    metadata    TEXT    NOT NULL,
    -- HMAC-SHA256 of this row's columns, keyed by a key kept outside the
    -- database and chained over the previous row's MAC.
    prev_mac    BLOB    NOT NULL,
    mac         BLOB    NOT NULL
);
-- Every filter index ends in seq, so a filtered page walks one index in
-- seq order and never sorts. The category (`auth.` of `auth.failed`) is
-- an expression, so prefix filters are equality lookups.
CREATE INDEX audit_events_kind ON audit_events (kind, seq);
CREATE INDEX audit_events_category ON audit_events (substr(kind, 1, instr(kind, '.')), seq);
CREATE INDEX audit_events_actor ON audit_events (actor_user, seq);
CREATE INDEX audit_events_resource ON audit_events (resource, seq);
CREATE INDEX audit_events_customer ON audit_events (customer, seq);
-- The writer keeps time non-decreasing along seq, so a time bound becomes
-- a seq bound with one seek here.
CREATE INDEX audit_events_time ON audit_events (time, seq);

-- Guards against accidents, not attackers: whoever can drop these can
-- edit rows, and the MAC chain is what catches that.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TABLE audit_checkpoints (
    -- The sequence number of the row the checkpoint covers.
    seq       INTEGER PRIMARY KEY,
    mac       BLOB    NOT NULL,
    -- Microseconds since the Unix epoch.
    time      INTEGER NOT NULL,
    -- Hex of the first 8 bytes of SHA-256 over the public key.
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL
);

-- The ACME renewal backoff of each domain whose orders keep failing, so
-- that a restart waits out the same backoff instead of ordering again at
-- once (no issuance storm against the CA after restarts). A domain's row
-- is removed when an order succeeds or the site is deleted.

CREATE TABLE acme_backoff (
    -- The site's domain, lower case.
    domain        TEXT    PRIMARY KEY,
    -- Failed orders in a row.
    failures      INTEGER NOT NULL CHECK (failures > 0),
    -- Unix seconds: no new order before this.
    next_attempt  INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

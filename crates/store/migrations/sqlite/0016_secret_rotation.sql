-- Secrets that an incident's containment rotated (crates/secrets, issue
-- 9). A row withholds the named secret of the site from every app start
-- until someone sets a new value (which deletes the rows of that name) or
-- the incident lifts its action (which deletes that incident's rows).
-- Several incidents may hold one secret; any one row withholds it. No
-- values here.
CREATE TABLE secret_rotations (
    site_id     INTEGER NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    incident    INTEGER NOT NULL CHECK (incident > 0),
    required_at INTEGER NOT NULL,
    PRIMARY KEY (site_id, name, incident)
);

-- Incidents (crates/incident): what detections and operators opened,
-- their indicators, their timeline and the containment actions taken.
-- Times are Unix seconds.

CREATE TABLE incidents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT    NOT NULL,
    rule        TEXT    NOT NULL,
    severity    TEXT    NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    status      TEXT    NOT NULL CHECK (status IN ('open', 'contained', 'resolved')),
    -- Groups detections into the one unresolved incident about a source.
    group_key   TEXT,
    opened_at   INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX incidents_by_group ON incidents (group_key, status);
CREATE INDEX incidents_by_time ON incidents (opened_at);

CREATE TABLE incident_indicators (
    incident_id INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (incident_id, kind, value)
);

CREATE TABLE incident_timeline (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    time        INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    summary     TEXT    NOT NULL,
    event       TEXT
);
CREATE INDEX incident_timeline_by_incident ON incident_timeline (incident_id, id);

CREATE TABLE incident_actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('active', 'lifted', 'done')),
    actor       TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL,
    lifted_at   INTEGER
);
CREATE INDEX incident_actions_by_state ON incident_actions (state, kind);

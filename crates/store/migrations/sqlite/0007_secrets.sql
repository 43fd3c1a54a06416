-- Secrets at rest (crates/secrets, issue 8). One row per version of a
-- site's secret. The value is AES-256-GCM under its own data key, and the
-- data key is AES-256-GCM under the master key named by `kek_id`; both
-- blobs are `nonce || ciphertext || tag`, bound to (site, name, version),
-- so a blob copied to another row does not decrypt. No plaintext here.
CREATE TABLE secret_versions (
    site_id     INTEGER NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    kek_id      TEXT    NOT NULL,
    wrapped_key BLOB    NOT NULL,
    ciphertext  BLOB    NOT NULL,
    created_by  INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (site_id, name, version)
);
CREATE INDEX secret_versions_kek ON secret_versions (kek_id);

-- Per-site upstream TLS (issue #10, "Upstreams"): a proxy site's own CA
-- for verifying its https:// upstream, and its own client certificate for
-- upstreams that demand mutual TLS. A site without a row uses the serve
-- configuration's `proxy.upstream_*` settings (or the system's roots).
--
-- The client key is stored only sealed with the secrets envelope
-- (purpose 'upstream-client-key', name = domain). `legacy_plaintext`
-- exists only so the secrets crate can treat this table like the other
-- sealed-key tables of 0013; nothing ever writes it.

CREATE TABLE site_upstream_tls (
    domain           TEXT    PRIMARY KEY REFERENCES sites (domain) ON DELETE CASCADE,
    -- PEM: one or more CA certificates trusted besides the system's roots.
    ca_pem           TEXT,
    -- PEM: the client certificate chain; NULL when the site has none.
    client_cert_pem  TEXT,
    legacy_plaintext TEXT    CHECK (legacy_plaintext IS NULL),
    kek_id           TEXT,
    wrapped_key      BLOB,
    ciphertext       BLOB,
    updated_at       INTEGER NOT NULL,
    CHECK (ca_pem IS NOT NULL OR client_cert_pem IS NOT NULL),
    CHECK ((client_cert_pem IS NULL) = (ciphertext IS NULL)),
    CHECK ((ciphertext IS NULL) = (kek_id IS NULL)),
    CHECK ((ciphertext IS NULL) = (wrapped_key IS NULL))
);
CREATE INDEX site_upstream_tls_kek ON site_upstream_tls (kek_id);

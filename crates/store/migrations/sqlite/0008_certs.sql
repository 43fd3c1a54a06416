-- TLS certificates the edge serves, the ACME account they were ordered
-- with, and each site's HTTP-to-HTTPS settings.
--
-- Limitation: private keys and the ACME account key are stored in plain
-- text in this database (which is mode 0600 inside a 0700 directory);
-- the secrets branch's envelope encryption will wrap them.

CREATE TABLE certificates (
    -- The domain the certificate is served for (SNI), lower case.
    domain      TEXT    PRIMARY KEY,
    -- The leaf first, then its intermediates, PEM.
    chain_pem   TEXT    NOT NULL,
    key_pem     TEXT    NOT NULL,
    -- The issuer's distinguished name, for `certs list`.
    issuer      TEXT    NOT NULL,
    -- Unix seconds.
    not_after   INTEGER NOT NULL,
    source      TEXT    NOT NULL CHECK (source IN ('acme', 'upload')),
    updated_at  INTEGER NOT NULL
);

CREATE TABLE acme_accounts (
    -- One account per ACME directory URL.
    directory   TEXT    PRIMARY KEY,
    -- instant-acme's serialized account credentials (JSON, holds the key).
    credentials TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE site_tls (
    domain      TEXT    PRIMARY KEY REFERENCES sites (domain) ON DELETE CASCADE,
    mode        TEXT    NOT NULL CHECK (mode IN ('redirect', 'both', 'https_only')),
    hsts_include_subdomains INTEGER NOT NULL DEFAULT 0,
    hsts_preload            INTEGER NOT NULL DEFAULT 0
);

-- Keys at rest (issue #10, crates/secrets/src/sealed.rs). Certificate
-- private keys, ACME account credentials and token signing keys are
-- sealed with the secrets envelope: the key material is AES-256-GCM under
-- its own data key, bound to (purpose, name), and the data key is wrapped
-- by the master key named in `kek_id`. This lifts the Limitations noted
-- in 0002 (signing_keys) and 0008 (certificates, acme_accounts), which
-- stay as they were because applied migrations must not change.
--
-- SQL cannot seal, so this migration only reshapes the tables: a row
-- written before it keeps its plain key in `legacy_plaintext` until the
-- next start, when the secrets crate seals every such row in one
-- transaction (`Secrets::open`). A row holds exactly one form, plain or
-- sealed. The store's connections run with secure_delete on, so the old
-- tables' pages are zeroed when they are dropped here.

CREATE TABLE certificates_0013 (
    domain           TEXT    PRIMARY KEY,
    chain_pem        TEXT    NOT NULL,
    -- The PEM private key of a row from before this migration; NULL once
    -- sealed.
    legacy_plaintext TEXT,
    -- The sealed private key (purpose 'certificate-key', name = domain).
    kek_id           TEXT,
    wrapped_key      BLOB,
    ciphertext       BLOB,
    issuer           TEXT    NOT NULL,
    not_after        INTEGER NOT NULL,
    source           TEXT    NOT NULL CHECK (source IN ('acme', 'upload')),
    updated_at       INTEGER NOT NULL,
    CHECK ((legacy_plaintext IS NULL) = (ciphertext IS NOT NULL)),
    CHECK ((ciphertext IS NULL) = (kek_id IS NULL)),
    CHECK ((ciphertext IS NULL) = (wrapped_key IS NULL))
);
INSERT INTO certificates_0013
    (domain, chain_pem, legacy_plaintext, issuer, not_after, source, updated_at)
    SELECT domain, chain_pem, key_pem, issuer, not_after, source, updated_at
    FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_0013 RENAME TO certificates;

CREATE TABLE acme_accounts_0013 (
    directory        TEXT    PRIMARY KEY,
    -- instant-acme's credentials JSON of a row from before this
    -- migration; NULL once sealed.
    legacy_plaintext TEXT,
    -- The sealed credentials (purpose 'acme-account', name = directory).
    kek_id           TEXT,
    wrapped_key      BLOB,
    ciphertext       BLOB,
    created_at       INTEGER NOT NULL,
    CHECK ((legacy_plaintext IS NULL) = (ciphertext IS NOT NULL)),
    CHECK ((ciphertext IS NULL) = (kek_id IS NULL)),
    CHECK ((ciphertext IS NULL) = (wrapped_key IS NULL))
);
INSERT INTO acme_accounts_0013 (directory, legacy_plaintext, created_at)
    SELECT directory, credentials, created_at FROM acme_accounts;
DROP TABLE acme_accounts;
ALTER TABLE acme_accounts_0013 RENAME TO acme_accounts;

CREATE TABLE signing_keys_0013 (
    kid              TEXT    PRIMARY KEY,
    -- The PKCS#8 document of a row from before this migration; NULL once
    -- sealed.
    legacy_plaintext BLOB,
    -- The sealed PKCS#8 document (purpose 'signing-key', name = kid).
    kek_id           TEXT,
    wrapped_key      BLOB,
    ciphertext       BLOB,
    public_key       BLOB    NOT NULL,
    created_at       INTEGER NOT NULL,
    active           INTEGER NOT NULL DEFAULT 0,
    retired_at       INTEGER,
    CHECK ((legacy_plaintext IS NULL) = (ciphertext IS NOT NULL)),
    CHECK ((ciphertext IS NULL) = (kek_id IS NULL)),
    CHECK ((ciphertext IS NULL) = (wrapped_key IS NULL))
);
INSERT INTO signing_keys_0013
    (kid, legacy_plaintext, public_key, created_at, active, retired_at)
    SELECT kid, private_key, public_key, created_at, active, retired_at
    FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_0013 RENAME TO signing_keys;

CREATE INDEX certificates_kek ON certificates (kek_id);
CREATE INDEX acme_accounts_kek ON acme_accounts (kek_id);
CREATE INDEX signing_keys_kek ON signing_keys (kek_id);

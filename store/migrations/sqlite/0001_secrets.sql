-- Projects' key-encryption keys (only ever wrapped under the HSM's master key), secrets
-- (only ever ciphertext), and secrets' user metadata.
CREATE TABLE project_keks (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1,
    created     INTEGER NOT NULL
);
CREATE UNIQUE INDEX project_keks_one_active ON project_keks (project_id) WHERE active = 1;

CREATE TABLE secrets (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL,
    name          TEXT,
    secret_type   TEXT NOT NULL,
    algorithm     TEXT,
    bit_length    INTEGER,
    mode          TEXT,
    expiration    INTEGER,
    creator_id    TEXT,
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    content_type  TEXT,
    kek_id        TEXT REFERENCES project_keks (id),
    ciphertext    BLOB,
    iv            BLOB,
    tag           BLOB
);
CREATE INDEX secrets_project ON secrets (project_id, created);

CREATE TABLE secret_metadata (
    secret_id  TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    created    INTEGER NOT NULL,
    updated    INTEGER NOT NULL,
    PRIMARY KEY (secret_id, key)
);

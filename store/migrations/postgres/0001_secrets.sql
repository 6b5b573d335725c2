-- Projects' key-encryption keys (only ever wrapped under the HSM's master key), secrets
-- (only ever ciphertext), and secrets' user metadata.
CREATE TABLE project_keks (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    wrapped     BYTEA NOT NULL,
    active      BIGINT NOT NULL DEFAULT 1,
    created     BIGINT NOT NULL
);
CREATE UNIQUE INDEX project_keks_one_active ON project_keks (project_id) WHERE active = 1;

CREATE TABLE secrets (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL,
    name          TEXT,
    secret_type   TEXT NOT NULL,
    algorithm     TEXT,
    bit_length    BIGINT,
    mode          TEXT,
    expiration    BIGINT,
    creator_id    TEXT,
    created       BIGINT NOT NULL,
    updated       BIGINT NOT NULL,
    content_type  TEXT,
    kek_id        TEXT REFERENCES project_keks (id),
    ciphertext    BYTEA,
    iv            BYTEA,
    tag           BYTEA
);
CREATE INDEX secrets_project ON secrets (project_id, created);

CREATE TABLE secret_metadata (
    secret_id  TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    created    BIGINT NOT NULL,
    updated    BIGINT NOT NULL,
    PRIMARY KEY (secret_id, key)
);

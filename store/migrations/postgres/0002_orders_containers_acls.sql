-- Secret consumers, containers, ACLs, orders (a job queue with leases), quotas, and the
-- per-project preferred secret store.
ALTER TABLE secrets ADD COLUMN payload_format TEXT;

CREATE TABLE secret_consumers (
    secret_id      TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    project_id     TEXT NOT NULL,
    service        TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    created        BIGINT NOT NULL,
    updated        BIGINT NOT NULL,
    PRIMARY KEY (secret_id, service, resource_type, resource_id)
);

CREATE TABLE containers (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    name        TEXT,
    type        TEXT NOT NULL,
    creator_id  TEXT,
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL
);
CREATE INDEX containers_project ON containers (project_id, created);

CREATE TABLE container_secrets (
    container_id  TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
    position      BIGINT NOT NULL,
    name          TEXT,
    secret_id     TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    PRIMARY KEY (container_id, position)
);

CREATE TABLE container_consumers (
    container_id  TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
    project_id    TEXT NOT NULL,
    name          TEXT NOT NULL,
    url           TEXT NOT NULL,
    created       BIGINT NOT NULL,
    updated       BIGINT NOT NULL,
    PRIMARY KEY (container_id, name, url)
);

CREATE TABLE acls (
    entity_type     TEXT NOT NULL,
    entity_id       TEXT NOT NULL,
    operation       TEXT NOT NULL,
    project_access  BIGINT NOT NULL,
    created         BIGINT NOT NULL,
    updated         BIGINT NOT NULL,
    PRIMARY KEY (entity_type, entity_id, operation)
);

CREATE TABLE acl_users (
    entity_type  TEXT NOT NULL,
    entity_id    TEXT NOT NULL,
    operation    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    PRIMARY KEY (entity_type, entity_id, operation, user_id)
);
CREATE INDEX acl_users_user ON acl_users (user_id);

CREATE TABLE orders (
    id                  TEXT PRIMARY KEY,
    project_id          TEXT NOT NULL,
    type                TEXT NOT NULL,
    meta                TEXT NOT NULL,
    status              TEXT NOT NULL,
    secret_id           TEXT,
    container_id        TEXT,
    error_status_code   TEXT,
    error_reason        TEXT,
    creator_id          TEXT,
    created             BIGINT NOT NULL,
    updated             BIGINT NOT NULL,
    lease_owner         TEXT,
    lease_until         BIGINT,
    attempts            BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX orders_queue ON orders (status, lease_until);
CREATE INDEX orders_project ON orders (project_id, created);

CREATE TABLE project_quotas (
    project_id  TEXT PRIMARY KEY,
    secrets     BIGINT,
    orders      BIGINT,
    containers  BIGINT,
    consumers   BIGINT,
    cas         BIGINT,
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL
);

CREATE TABLE preferred_stores (
    project_id  TEXT PRIMARY KEY,
    store_id    TEXT NOT NULL,
    created     BIGINT NOT NULL
);

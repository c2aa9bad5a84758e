-- Fleets, push tokens and releases of a Shoal builder.
CREATE TABLE fleets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    arch TEXT NOT NULL,
    device_type TEXT NOT NULL,
    rollout_plan TEXT NOT NULL,
    created INTEGER NOT NULL
);

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL
);

CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    sequence INTEGER,
    commit_hash TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    completed INTEGER,
    duration_ms INTEGER,
    log TEXT NOT NULL DEFAULT '',
    error TEXT,
    compose TEXT,
    services TEXT NOT NULL DEFAULT '[]',
    image_bytes INTEGER NOT NULL DEFAULT 0,
    release_bytes INTEGER NOT NULL DEFAULT 0,
    new_bytes INTEGER NOT NULL DEFAULT 0,
    manifest_digest TEXT,
    manifest_size INTEGER,
    UNIQUE (fleet_id, sequence)
);

CREATE INDEX releases_by_fleet ON releases (fleet_id, created);

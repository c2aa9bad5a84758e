-- Device registry, operator tokens, pins, audit log and saved views.

-- 'push' tokens push code; 'operator' tokens also steer rollouts and change fleet settings.
ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'push';

-- A release every device of the fleet should run instead of the latest one (NULL: not pinned).
ALTER TABLE fleets ADD COLUMN pinned_sequence INTEGER;

-- Keys devices register with; only their BLAKE3 hash is stored.
CREATE TABLE provisioning_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    key_hash TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL
);

-- Registered devices. `id` is the device's ed25519 public key (hex), also its libp2p identity.
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    name TEXT NOT NULL,
    site TEXT NOT NULL,
    arch TEXT NOT NULL,
    device_type TEXT NOT NULL,
    registered INTEGER NOT NULL,
    last_seen INTEGER,
    -- The highest release the device reported healthy (committed).
    current_sequence INTEGER,
    -- The release of its latest report, and the state it reported.
    report_sequence INTEGER,
    state TEXT,
    detail TEXT NOT NULL DEFAULT '',
    -- Pinned to this release (NULL: follows the fleet).
    pinned_sequence INTEGER,
    UNIQUE (fleet_id, name)
);

CREATE INDEX devices_by_fleet ON devices (fleet_id, name);

-- Each device's latest state per release (report time and state order decide "latest").
CREATE TABLE device_releases (
    device_id TEXT NOT NULL REFERENCES devices(id),
    sequence INTEGER NOT NULL,
    state TEXT NOT NULL,
    state_rank INTEGER NOT NULL,
    report_time INTEGER NOT NULL,
    received INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (device_id, sequence)
);

-- Nonces of recent reports per device, so a replayed report is refused.
CREATE TABLE report_nonces (
    device_id TEXT NOT NULL REFERENCES devices(id),
    nonce TEXT NOT NULL,
    received INTEGER NOT NULL,
    PRIMARY KEY (device_id, nonce)
);

-- Every operator action, refused ones excluded (a refusal changes nothing).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    fleet TEXT,
    target TEXT,
    detail TEXT NOT NULL DEFAULT ''
);

-- Named filter sets of the releases page.
CREATE TABLE saved_views (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    name TEXT NOT NULL,
    filters TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (fleet_id, name)
);

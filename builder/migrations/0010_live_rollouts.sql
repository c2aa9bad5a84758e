-- The live rollout loop (builder/src/live.rs): each release's rollout as the events its
-- controller was fed (replayed on start-up), the signed wave control messages it published,
-- and the devices each fleet's origin has heard of.
CREATE TABLE live_rollouts (
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    sequence INTEGER NOT NULL,
    manifest_digest TEXT NOT NULL,
    rollout_plan TEXT NOT NULL,
    previous INTEGER,
    started_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (fleet_id, sequence)
);

CREATE TABLE live_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    sequence INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    event TEXT NOT NULL
);

CREATE INDEX live_events_by_rollout ON live_events (fleet_id, sequence, id);

CREATE TABLE live_wave_controls (
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    sequence INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (fleet_id, sequence, counter)
);

CREATE TABLE live_devices (
    fleet_id INTEGER NOT NULL REFERENCES fleets(id),
    device TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (fleet_id, device)
);

#!/usr/bin/env bash
# Makes sure a Docker Engine answers before the tests run. The machine normally starts one before
# a session; when it is not running (it can be stopped with the session's processes), start the
# installed dockerd in the background and wait for it. Without an installed Engine, say so: the
# Engine tests then skip with a printed reason.
set -euo pipefail

if docker info >/dev/null 2>&1; then
    echo "engine: Docker Engine reachable"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "engine: no Docker Engine installed; Engine tests will skip" >&2
    exit 0
fi
echo "engine: starting dockerd"
setsid nohup dockerd >>/var/log/shoal-dockerd.log 2>&1 </dev/null &
for _ in $(seq 90); do
    if docker info >/dev/null 2>&1; then
        echo "engine: Docker Engine up"
        exit 0
    fi
    sleep 1
done
echo "engine: dockerd did not answer within 90 s (see /var/log/shoal-dockerd.log); Engine tests will skip" >&2

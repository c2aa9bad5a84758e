#!/usr/bin/env bash
# Real host faults with the Docker Engine. The builder and six node daemons run as containers of
# the project's own image (scripts/image.sh) on two private Docker networks, one per site:
#
#   site-a (shoal-faults-RUN-a): node-1 node-2 node-3      builder on both networks (the uplink)
#   site-b (shoal-faults-RUN-b): node-4 node-5 node-6
#
# Nodes run the stage-only runtime (no Docker socket in them): a release is "applied" once every
# chunk reads back from the store and verifies again, and reported healthy, so waves advance.
# The builder builds releases with the host's Engine (its socket is mounted) from `git push`es of a
# generated app whose image carries a fresh random blob, so every release moves real data.
#
# Scenarios, each ending with every node on the expected release (applied and committed, every
# chunk of it stored) and printing PASS or FAIL with the reason:
#   partition  site-b's uplink is cut (docker network disconnect) during a rollout, then healed
#   builder    the builder is killed mid-rollout (its first wave bakes 60 s, so the rollout is
#              in it): the release still spreads among peers (a node started while it is down
#              stages it), waves do not advance; restarted, it finishes
#   kill       nodes are SIGKILLed mid-transfer and restarted: they resume and finish
#   restart    the whole fleet (builder and nodes) restarts: nothing is fetched or lost
#
# After each scenario, whatever a failure left behind (a stopped container, the builder off a
# network, the long first wave) is undone and the fleet settles on the newest release, so one
# failed scenario does not fail the ones after it.
#
# Usage: scripts/faults.sh [scenario...]   (default: all four, in that order)
# Env: SHOAL_BUILDER_EXE, SHOAL_NODE_EXE, CARGO_TARGET_DIR (see scripts/image.sh);
#      SHOAL_FAULTS_RUN (this run's id in every Docker object's name; default: random);
#      SHOAL_FAULTS_SUBNET (10.x: the sites get 10.x.1.0/24 and 10.x.2.0/24; default: the first
#      free of 10.213 to 10.244, so concurrent runs do not collide);
#      SHOAL_FAULTS_BLOB_MB (random megabytes per release, default 24);
#      SHOAL_FAULTS_LOGS (a directory to keep every container's log in).
# Exit status: 0 when every scenario passed, 1 when one failed, 2 when it could not start.
# Every Docker object is named shoal-faults-RUN-* (the app's images shoal-build/shoal-faults-RUN-*)
# and removed at the end, also when a scenario fails or the run is interrupted.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
RUN=${SHOAL_FAULTS_RUN:-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}
[[ $RUN =~ ^[a-z0-9]{1,12}$ ]] || { echo "SHOAL_FAULTS_RUN must be 1 to 12 of [a-z0-9]" >&2; exit 2; }
P=shoal-faults-$RUN
IMAGE=$P-image:latest
NET_A=$P-a
NET_B=$P-b
SUB=
BLOB_MB=${SHOAL_FAULTS_BLOB_MB:-24}
FLEET=$P
NODES=(1 2 3 4 5 6)
CFG=/var/lib/shoal/shoal.toml
BUILDER=$P-builder
T0=$(date +%s)

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(partition builder kill restart)

log() { printf '[faults %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "cannot run: $*"; exit 2; }

for tool in docker git curl jq xxd; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "no Docker Engine answers"

# Another run with this id (or a killed one) owns these objects: never remove them from here.
left=$(docker ps -aq --filter "name=^$P-"; docker network ls -q --filter "name=^$P-")
[ -z "$left" ] || die "$P-* containers or networks exist (another run with this id?); remove them first"

WORK=$(mktemp -d /tmp/shoal-faults.XXXXXX)
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "${WORK:-}" ]; then
        for c in $(docker ps -a --filter "name=^$P-" --format '{{.Names}}'); do
            echo "---- last log lines of $c"
            docker logs --tail 15 "$c" 2>&1 | sed 's/^/    /'
        done
    fi
    if [ -n "${SHOAL_FAULTS_LOGS:-}" ]; then
        mkdir -p "$SHOAL_FAULTS_LOGS"
        for c in $(docker ps -a --filter "name=^$P-" --format '{{.Names}}'); do
            docker logs "$c" >"$SHOAL_FAULTS_LOGS/$c.log" 2>&1 || true
        done
    fi
    docker ps -aq --filter "name=^$P-" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "name=^$P-" | xargs -r docker network rm >/dev/null 2>&1 || true
    docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
    # The builder's images of the app (tagged shoal-build/shoal-faults-app, older ones untagged).
    sort -u "$WORK/built" 2>/dev/null | xargs -r docker image rm -f >/dev/null 2>&1 || true
    # The containers wrote as root into the bind mounts.
    docker run --rm --name "$P-clean" -v "$WORK:/w" busybox:latest rm -rf /w/builder /w/nodes \
        >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ helpers

# until_ok SECONDS WHAT CMD...: runs CMD every half second until it succeeds; 1 on timeout.
until_ok() {
    local secs=$1 what=$2
    shift 2
    local end=$(($(date +%s) + secs))
    while [ "$(date +%s)" -lt "$end" ]; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    log "timed out after ${secs}s waiting for: $what"
    return 1
}

api() { curl -fsS --max-time 5 -H "Authorization: Bearer $TOKEN" "$API$1"; }
status() { docker exec "$P-node-$1" shoal-node status --config "$CFG" --json 2>/dev/null; }
# field N JQ: one value of node N's status ("" if it does not answer).
field() { status "$1" | jq -r "$2" 2>/dev/null || true; }
site_of() { if [ "$1" -le 3 ]; then echo a; else echo b; fi; }
ip_of() { if [ "$1" -le 3 ]; then echo "$SUB.1.$((10 + $1))"; else echo "$SUB.2.$((10 + $1))"; fi; }

# on_release N SEQ: node N applied and committed SEQ and stores every chunk of it.
on_release() {
    status "$1" | jq -e --argjson s "$2" \
        '.applied == $s and .committed == $s and .target == $s and .total_chunks > 0
         and .have_chunks == .total_chunks' >/dev/null
}
# staged N SEQ: node N stores every chunk of SEQ (staged or beyond).
staged() {
    status "$1" | jq -e --argjson s "$2" \
        '.target == $s and .total_chunks > 0 and .have_chunks == .total_chunks
         and (.phase == "staged" or .phase == "applying" or .phase == "running"
              or .phase == "healthy")' >/dev/null
}
all_on() {
    local seq=$1
    shift
    for n in "$@"; do on_release "$n" "$seq" || return 1; done
}
all_staged() {
    local seq=$1
    shift
    for n in "$@"; do staged "$n" "$seq" || return 1; done
}
show_nodes() {
    for n in "${NODES[@]}"; do
        local s
        s=$(status "$n" | jq -c '{target, phase, have_chunks, total_chunks, applied, committed,
            peers: (.peers | length), bytes_in}' 2>/dev/null || echo "not answering")
        log "  node-$n (site-$(site_of "$n")): $s"
    done
}
rollout() { api "/api/v1/fleets/$FLEET/rollout"; }
rollout_complete() { rollout | jq -e --argjson s "$1" '.sequence == $s and .state == "complete"'; }

start_node() {
    local n=$1 net=$NET_A
    [ "$(site_of "$n")" = b ] && net=$NET_B
    docker run -d --init --name "$P-node-$n" --hostname "node-$n" --network "$net" --ip "$(ip_of "$n")" \
        -v "$WORK/nodes/$n:/var/lib/shoal" -e RUST_LOG=info -e NO_COLOR=1 "$IMAGE" \
        sh -c "[ -f /var/lib/shoal/device.key ] || shoal-node init --config $CFG; exec shoal-node run --config $CFG" \
        >/dev/null
}

# write_config N BOOTSTRAP...: node N's configuration file.
write_config() {
    local n=$1
    shift
    local list="" a
    for a in "$@"; do list="$list\"$a\", "; done
    mkdir -p "$WORK/nodes/$n"
    cat >"$WORK/nodes/$n/shoal.toml" <<EOF
data_dir = "/var/lib/shoal"
fleet = "$FLEET"
arch = "amd64"
trust_root = "/var/lib/shoal/root.bin"
site = "site-$(site_of "$n")"
listen = ["/ip4/0.0.0.0/udp/7400/quic-v1"]
data_listen = "0.0.0.0:7401"
bootstrap = [${list%, }]

[runtime]
kind = "stage-only"
EOF
}

builder_up() { curl -fsS --max-time 2 "$API/api/v1/fleets" -H "Authorization: Bearer $TOKEN"; }

# publish: commits a new random blob to the app and pushes it; prints the release's sequence.
publish() {
    head -c "$((BLOB_MB * 1024 * 1024))" /dev/urandom >"$WORK/app/app/blob"
    git -C "$WORK/app" add -A
    git -C "$WORK/app" -c user.name=faults -c user.email=faults@example.invalid \
        commit -q -m "release $(date +%s%N)"
    if ! git -C "$WORK/app" push -q "http://git:$TOKEN@$SUB.1.2:7480/git/$FLEET.git" \
        HEAD:master >"$WORK/push.log" 2>&1; then
        log "git push failed:" >&2
        sed 's/^/    /' "$WORK/push.log" >&2
        return 1
    fi
    docker image inspect -f '{{.Id}}' "shoal-build/$FLEET-app:latest" >>"$WORK/built" 2>/dev/null || true
    api "/api/v1/fleets/$FLEET/releases?limit=1" | jq -r '.releases[0].sequence'
}

# plan BAKE_FIRST BAKE_REST: the fleet's rollout plan (four waves of 20/20/20/40 %), as JSON.
plan() {
    local w='"min_sample": 1, "success_threshold_pct": 100, "error_threshold_pct": 50'
    echo "{\"waves\": [
      {\"percent\": 20, $w, \"bake_time_s\": $1}, {\"percent\": 20, $w, \"bake_time_s\": $2},
      {\"percent\": 20, $w, \"bake_time_s\": $2}, {\"percent\": 40, $w, \"bake_time_s\": $2}],
      \"progress_deadline_s\": 900}"
}
# set_plan BAKE_FIRST BAKE_REST: the plan the next release is built with.
set_plan() {
    curl -fsS --max-time 10 -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"plan\": $(plan "$1" "$2")}" "$API/api/v1/fleets/$FLEET/rollout-policy" >/dev/null
}
newest() { api "/api/v1/fleets/$FLEET/releases?limit=1" | jq -r '.releases[0].sequence'; }

FAILED=()
PASSED=()
TIMES=()
SCENARIO_T0=0
pass() {
    log "PASS $1: $2"
    PASSED+=("$1")
    TIMES+=("$1 PASS $(($(date +%s) - SCENARIO_T0))s")
}
fail() {
    log "FAIL $1: $2"
    FAILED+=("$1")
    TIMES+=("$1 FAIL $(($(date +%s) - SCENARIO_T0))s")
    show_nodes
}

# restore: undoes what a failed scenario may have left (a stopped container, the builder off
# site-b's network, the long first wave) and waits for every node to run the newest release.
restore() {
    local names=("$BUILDER") n seq
    for n in "${NODES[@]}"; do names+=("$P-node-$n"); done
    docker start "${names[@]}" >/dev/null 2>&1 || true
    if ! docker inspect -f '{{json .NetworkSettings.Networks}}' "$BUILDER" |
        jq -e --arg n "$NET_B" 'has($n)' >/dev/null 2>&1; then
        docker network connect --ip "$SUB.2.2" "$NET_B" "$BUILDER" || return 1
    fi
    until_ok 60 "the builder's API" builder_up || return 1
    set_plan 4 4 || return 1
    for n in "${NODES[@]}"; do
        until_ok 30 "node-$n's control socket" status "$n" || return 1
    done
    seq=$(newest) || return 1
    until_ok 240 "every node on release $seq" all_on "$seq" "${NODES[@]}" || return 1
    until_ok 60 "rollout of $seq complete" rollout_complete "$seq" || return 1
    SEQ=$seq
}

# ------------------------------------------------------------------ set-up

log "run $RUN: image: building $IMAGE from the cargo target's executables"
bash "$root_dir/scripts/image.sh" "$IMAGE" || die "scripts/image.sh failed"

# Two site networks on the first free pair of subnets (another run may hold some).
if [ -n "${SHOAL_FAULTS_SUBNET:-}" ]; then candidates=("$SHOAL_FAULTS_SUBNET"); else
    candidates=(); for i in $(seq 213 244); do candidates+=("10.$i"); done
fi
for c in "${candidates[@]}"; do
    if docker network create --subnet "$c.1.0/24" "$NET_A" >/dev/null 2>&1; then
        if docker network create --subnet "$c.2.0/24" "$NET_B" >/dev/null 2>&1; then
            SUB=$c
            break
        fi
        docker network rm "$NET_A" >/dev/null 2>&1 || true
    fi
done
[ -n "$SUB" ] || die "no free pair of subnets among ${candidates[*]} (10.x.1.0/24, 10.x.2.0/24)"
API="http://$SUB.1.2:7480"
log "networks $NET_A ($SUB.1.0/24) and $NET_B ($SUB.2.0/24)"

mkdir -p "$WORK/builder" "$WORK/nodes" "$WORK/app/app"
TOKEN=$(docker run --rm -v "$WORK/builder:/data" "$IMAGE" \
    shoal-builder token create --name faults --operator --data /data) || die "token create failed"
docker run -d --init --name "$BUILDER" --network "$NET_A" --ip "$SUB.1.2" \
    -v "$WORK/builder:/data" -v /var/run/docker.sock:/var/run/docker.sock -e RUST_LOG=info -e NO_COLOR=1 \
    "$IMAGE" shoal-builder serve --listen 0.0.0.0:7480 \
    --p2p-listen /ip4/0.0.0.0/udp/7400/quic-v1 --data-listen 0.0.0.0:7401 --data /data >/dev/null
docker network connect --ip "$SUB.2.2" "$NET_B" "$BUILDER"
until_ok 60 "the builder's API" builder_up || die "the builder did not answer"

curl -fsS --max-time 10 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"name\": \"$FLEET\", \"arch\": \"amd64\", \"device_type\": \"generic-amd64\", \"rollout\": $(plan 4 4)}" \
    "$API/api/v1/fleets" >/dev/null || die "creating the fleet failed"
boot=$(api "/api/v1/fleets/$FLEET/bootstrap") || die "no bootstrap answer"
ORIGIN=$(jq -r .origin_peer_id <<<"$boot")
[ -n "$ORIGIN" ] && [ "$ORIGIN" != null ] || die "bootstrap names no origin peer: $boot"
for n in "${NODES[@]}"; do
    mkdir -p "$WORK/nodes/$n"
    jq -r .trust_root_hex <<<"$boot" | xxd -r -p >"$WORK/nodes/$n/root.bin"
    write_config "$n" "/ip4/$SUB.$([ "$(site_of "$n")" = a ] && echo 1 || echo 2).2/udp/7400/quic-v1/p2p/$ORIGIN"
    start_node "$n"
done
for n in "${NODES[@]}"; do
    until_ok 30 "node-$n's control socket" status "$n" || die "node-$n did not start"
done
# Once every peer id is known, each node also bootstraps from its site's other nodes, so a node
# that starts while the builder is down still finds peers.
declare -A PEER
for n in "${NODES[@]}"; do
    PEER[$n]=$(field "$n" '.listen_addrs[0]' | sed 's#.*/p2p/##')
    [ -n "${PEER[$n]}" ] || die "node-$n reports no listen address"
done
for n in "${NODES[@]}"; do
    boots=("/ip4/$SUB.$([ "$(site_of "$n")" = a ] && echo 1 || echo 2).2/udp/7400/quic-v1/p2p/$ORIGIN")
    for m in "${NODES[@]}"; do
        if [ "$m" != "$n" ] && [ "$(site_of "$m")" = "$(site_of "$n")" ]; then
            boots+=("/ip4/$(ip_of "$m")/udp/7400/quic-v1/p2p/${PEER[$m]}")
        fi
    done
    write_config "$n" "${boots[@]}"
done

cat >"$WORK/app/docker-compose.yml" <<'EOF'
version: '2.1'
services:
  app:
    build: ./app
EOF
printf 'FROM busybox:latest\nCOPY blob /blob\nCMD ["sleep", "3600"]\n' >"$WORK/app/app/Dockerfile"
git -C "$WORK/app" init -q -b master

t=$(date +%s)
SEQ=$(publish) || die "the first release was not published"
log "release $SEQ published in $(($(date +%s) - t))s (${BLOB_MB} MB blob); rolling out"
until_ok 180 "every node on release $SEQ" all_on "$SEQ" "${NODES[@]}" ||
    { show_nodes; die "the first rollout did not reach every node"; }
log "set-up done: every node on release $SEQ"
TIMES+=("setup $(($(date +%s) - T0))s")

# ------------------------------------------------------------------ scenarios

scenario_partition() {
    log "partition: cutting site-b off (builder leaves $NET_B)"
    docker network disconnect "$NET_B" "$BUILDER"
    local seq
    seq=$(publish) || { fail partition "release not published"; return; }
    log "partition: release $seq published while site-b is cut off"
    if ! until_ok 150 "site-a staging release $seq" all_staged "$seq" 1 2 3; then
        fail partition "site-a did not stage release $seq while site-b was cut off"
        return
    fi
    # Long enough for the QUIC connections across the cut to time out.
    sleep 20
    local n
    for n in 4 5 6; do
        if [ "$(field "$n" '.target')" = "$seq" ] || [ "$(field "$n" '.applied')" = "$seq" ]; then
            fail partition "node-$n (site-b) heard of release $seq through a cut link"
            return
        fi
    done
    log "partition: site-a staged $seq, site-b has not heard of it; healing"
    docker network connect --ip "$SUB.2.2" "$NET_B" "$BUILDER"
    if ! until_ok 180 "every node on release $seq after the heal" all_on "$seq" "${NODES[@]}"; then
        fail partition "after the heal not every node reached release $seq"
        return
    fi
    if ! until_ok 60 "rollout of $seq complete" rollout_complete "$seq"; then
        fail partition "every node runs $seq but the builder's rollout is not complete"
        return
    fi
    SEQ=$seq
    pass partition "site-b missed release $seq while cut off; after the heal all 6 nodes run it"
}

scenario_builder() {
    local seq
    # The first wave bakes 60 s: the rollout is in it when the builder stops (a release stages
    # on both sites in 5 to 20 s), so stopping the builder holds every later wave.
    set_plan 60 4 || { fail builder "cannot set the rollout plan"; return; }
    # node-6 is off during the push: it can only get the release from peers later.
    docker stop -t 5 "$P-node-6" >/dev/null
    seq=$(publish) || { fail builder "release not published"; return; }
    log "builder: release $seq published (first wave bakes 60 s); waiting for one node per site to stage it"
    one_per_site() {
        (staged 1 "$seq" || staged 2 "$seq" || staged 3 "$seq") &&
            (staged 4 "$seq" || staged 5 "$seq")
    }
    if ! until_ok 150 "one node per site staging $seq" one_per_site; then
        fail builder "release $seq did not reach both sites"
        return
    fi
    local prog open_wave last_wave stop_ms start_ms
    prog=$(rollout)
    docker kill "$BUILDER" >/dev/null
    stop_ms=$(date +%s%3N)
    open_wave=$(jq -r .open_wave <<<"$prog")
    last_wave=$(($(jq -r '.waves | length' <<<"$prog") - 1))
    log "builder: killed with release $seq in wave $open_wave of 0..$last_wave ($(jq -r .state <<<"$prog"))"
    if [ "$(jq -r .sequence <<<"$prog")" != "$seq" ] || [ "$open_wave" -ge "$last_wave" ]; then
        fail builder "the rollout of $seq was not mid-way when the builder stopped: $(jq -c '{sequence, state, open_wave}' <<<"$prog")"
        return
    fi
    docker start "$P-node-6" >/dev/null
    if ! until_ok 120 "release $seq staged by all 6 nodes with the builder down" \
        all_staged "$seq" "${NODES[@]}"; then
        fail builder "with the builder down, release $seq did not spread to every node"
        return
    fi
    log "builder: all 6 nodes staged $seq from peers in $((($(date +%s%3N) - stop_ms) / 1000))s (node-6 started after the builder stopped)"
    sleep 8
    local applied=() waiting=() n
    for n in "${NODES[@]}"; do
        if [ "$(field "$n" '.applied')" = "$seq" ]; then applied+=("$n"); else waiting+=("$n"); fi
    done
    log "builder: after 8 s more: applied on nodes ${applied[*]:-none}; staged and waiting: ${waiting[*]:-none}"
    start_ms=$(date +%s%3N)
    docker start "$BUILDER" >/dev/null
    if ! until_ok 60 "the builder's API after its restart" builder_up; then
        fail builder "the builder did not come back"
        return
    fi
    if ! until_ok 180 "every node on $seq after the builder's restart" all_on "$seq" "${NODES[@]}"; then
        fail builder "after the builder's restart not every node reached release $seq"
        return
    fi
    if ! until_ok 60 "rollout of $seq complete" rollout_complete "$seq"; then
        fail builder "every node runs $seq but the builder's rollout is not complete"
        return
    fi
    # Waves did not advance while the builder was down: none opened between its stop and its
    # restart, and every node that applied meanwhile is in a wave opened before the stop.
    prog=$(rollout)
    local opened_during
    opened_during=$(jq -c --argjson a "$stop_ms" --argjson b "$start_ms" \
        '[.waves[] | select(.opened_at_ms != null and .opened_at_ms > $a and .opened_at_ms < $b) | .wave]' <<<"$prog")
    if [ "$opened_during" != "[]" ]; then
        fail builder "waves $opened_during opened while the builder was down"
        return
    fi
    local dev wave opened
    for n in "${applied[@]}"; do
        dev=$(field "$n" .device)
        wave=$(jq -r --arg d "$dev" '.devices[] | select(.device == $d) | .wave' <<<"$prog")
        opened=$(jq -r --argjson w "${wave:-0}" '.waves[] | select(.wave == $w) | .opened_at_ms // 0' <<<"$prog")
        if [ -z "$wave" ] || [ "$opened" -eq 0 ] || [ "$opened" -gt "$stop_ms" ]; then
            fail builder "node-$n applied $seq while the builder was down although its wave ${wave:-?} opened only at ${opened:-?} (stop at $stop_ms)"
            return
        fi
    done
    if [ ${#waiting[@]} -eq 0 ]; then
        fail builder "no node was left waiting for a wave while the builder was down; nothing showed waves hold"
        return
    fi
    SEQ=$seq
    pass builder "release $seq spread to all nodes with the builder down, ${#waiting[@]} waited for their waves; all on $seq after its restart"
}

scenario_kill() {
    local seq victims=(2 5) n
    seq=$(publish) || { fail kill "release not published"; return; }
    log "kill: release $seq published; killing nodes ${victims[*]} mid-transfer"
    declare -A had
    local end=$(($(date +%s) + 120)) s have total
    local pending=("${victims[@]}")
    while [ ${#pending[@]} -gt 0 ] && [ "$(date +%s)" -lt "$end" ]; do
        local left=()
        for n in "${pending[@]}"; do
            s=$(status "$n" || true)
            have=$(jq -r '.have_chunks // 0' <<<"$s" 2>/dev/null || echo 0)
            total=$(jq -r '.total_chunks // 0' <<<"$s" 2>/dev/null || echo 0)
            if [ "$(jq -r .target <<<"$s" 2>/dev/null)" = "$seq" ] && [ "$total" -gt 0 ] &&
                [ "$have" -gt 0 ] && [ "$have" -lt "$total" ]; then
                docker kill "$P-node-$n" >/dev/null
                had[$n]="$have/$total"
                log "kill: node-$n SIGKILLed holding $have of $total chunks"
            elif [ "$total" -gt 0 ] && [ "$have" -eq "$total" ] && [ "$(jq -r .target <<<"$s")" = "$seq" ]; then
                had[$n]=missed
            else
                left+=("$n")
            fi
        done
        pending=("${left[@]}")
    done
    for n in "${victims[@]}"; do
        if [ "${had[$n]:-}" = "" ] || [ "${had[$n]}" = missed ]; then
            fail kill "node-$n finished (or never started) the transfer before it could be killed mid-way; raise SHOAL_FAULTS_BLOB_MB"
            return
        fi
    done
    sleep 3
    local restart_ms
    restart_ms=$(date +%s%3N)
    for n in "${victims[@]}"; do docker start "$P-node-$n" >/dev/null; done
    if ! until_ok 180 "the killed nodes staging $seq" all_staged "$seq" "${victims[@]}"; then
        fail kill "the killed nodes did not finish staging release $seq after their restart"
        return
    fi
    log "kill: nodes ${victims[*]} restarted and finished staging $seq in $((($(date +%s%3N) - restart_ms) / 1000))s"
    if ! until_ok 180 "every node on $seq after the kills" all_on "$seq" "${NODES[@]}"; then
        fail kill "after restarting the killed nodes not every node reached release $seq"
        return
    fi
    if ! until_ok 60 "rollout of $seq complete" rollout_complete "$seq"; then
        fail kill "every node runs $seq but the builder's rollout is not complete"
        return
    fi
    SEQ=$seq
    pass kill "nodes 2 and 5 killed mid-transfer (${had[2]}, ${had[5]} chunks), restarted, resumed and verified release $seq"
}

scenario_restart() {
    local before after n
    # The newest release, whatever the scenarios before made of it.
    SEQ=$(api "/api/v1/fleets/$FLEET/releases?limit=1" | jq -r '.releases[0].sequence')
    before=$(api "/api/v1/fleets/$FLEET/releases?limit=50" | jq -c '[.releases[] | {id, sequence, status, commit}]')
    log "restart: stopping the builder and all 6 nodes"
    docker stop -t 10 "$BUILDER" $(for n in "${NODES[@]}"; do echo "$P-node-$n"; done) >/dev/null
    docker start "$BUILDER" $(for n in "${NODES[@]}"; do echo "$P-node-$n"; done) >/dev/null
    if ! until_ok 60 "the builder's API after the restart" builder_up; then
        fail restart "the builder did not come back"
        return
    fi
    if ! until_ok 120 "every node on $SEQ after the restart" all_on "$SEQ" "${NODES[@]}"; then
        fail restart "after the restart not every node is back on release $SEQ"
        return
    fi
    after=$(api "/api/v1/fleets/$FLEET/releases?limit=50" | jq -c '[.releases[] | {id, sequence, status, commit}]')
    if [ "$before" != "$after" ]; then
        fail restart "the builder's releases changed across the restart: $before -> $after"
        return
    fi
    if ! until_ok 60 "rollout of $SEQ complete" rollout_complete "$SEQ"; then
        fail restart "the builder's rollout of $SEQ is not complete after the restart"
        return
    fi
    sleep 3
    for n in "${NODES[@]}"; do
        local got
        got=$(field "$n" .bytes_in)
        if [ "$got" != 0 ]; then
            fail restart "node-$n fetched $got bytes after the restart: its store lost data"
            return
        fi
    done
    pass restart "builder and 6 nodes restarted: all back on release $SEQ, no chunk fetched again, $(jq length <<<"$after") releases kept"
}

for s in "${scenarios[@]}"; do
    case $s in
    partition | builder | kill | restart) ;;
    *) die "unknown scenario $s (partition, builder, kill, restart)" ;;
    esac
done
for s in "${scenarios[@]}"; do
    SCENARIO_T0=$(date +%s)
    "scenario_$s"
    t=$(date +%s)
    if ! restore; then
        log "could not bring the fleet back together after $s; the scenarios after it cannot run"
        show_nodes
        FAILED+=("restore-after-$s")
        break
    fi
    [ "$(($(date +%s) - t))" -le 2 ] || log "restored after $s in $(($(date +%s) - t))s"
done

log "timings: ${TIMES[*]:-none}; total $(($(date +%s) - T0))s"
if [ ${#FAILED[@]} -gt 0 ]; then
    log "RESULT: FAIL (${FAILED[*]}); passed: ${PASSED[*]:-none}"
    exit 1
fi
log "RESULT: PASS (${PASSED[*]})"

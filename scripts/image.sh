#!/usr/bin/env bash
# Makes the project's own image without any registry: the local `busybox:latest` base
# (scripts/base-image.sh) plus `shoal-builder`, `shoal-node`, git (the builder serves git smart
# HTTP through `git http-backend`) and every shared library `ldd` lists for them.
#
#   scripts/image.sh [TAG]            # default TAG: shoal:dev
#
# The executables come from SHOAL_BUILDER_EXE / SHOAL_NODE_EXE, else from the cargo target
# directory ($CARGO_TARGET_DIR or ./target), debug build first, then release; build them with
# `cargo build -p shoal-builder -p shoal-node`. Nothing is compiled here, so the image is made in
# seconds from whatever `cargo build` or `cargo test --workspace` left.
#
# In the image: /usr/local/bin/shoal-builder, /usr/local/bin/shoal-node, /usr/bin/git (and
# /usr/lib/git-core), HOME=/root, no entry point (give the command: `shoal-node run --config F`).
set -euo pipefail

tag=${1:-shoal:dev}
root_dir=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root_dir/target}

pick() { # pick NAME ENV_VALUE -> path of the executable
    local name=$1 given=$2
    if [ -n "$given" ]; then
        echo "$given"
        return
    fi
    for p in "$target/debug/$name" "$target/release/$name"; do
        if [ -x "$p" ]; then
            echo "$p"
            return
        fi
    done
    echo "image: no $name executable in $target/debug or $target/release;" \
        "run 'cargo build -p shoal-builder -p shoal-node' or set SHOAL_${name#shoal-}_EXE" >&2
    exit 1
}
builder_exe=$(pick shoal-builder "${SHOAL_BUILDER_EXE:-}")
node_exe=$(pick shoal-node "${SHOAL_NODE_EXE:-}")
for exe in "$builder_exe" "$node_exe"; do
    [ -x "$exe" ] || { echo "image: $exe is not an executable" >&2; exit 1; }
done

if ! docker info >/dev/null 2>&1; then
    echo "image: no Docker Engine reachable" >&2
    exit 1
fi
bash "$root_dir/scripts/base-image.sh" >/dev/null

git_exe=$(command -v git) || { echo "image: git is not installed on this host" >&2; exit 1; }
git_core=$(git --exec-path)

stage=$(mktemp -d)
box=""
cleanup() {
    rm -rf "$stage"
    [ -n "$box" ] && docker rm -f "$box" >/dev/null 2>&1 || true
}
trap cleanup EXIT

mkdir -p "$stage/usr/local/bin" "$stage/usr/bin" "$stage/$git_core" "$stage/root"
cp "$builder_exe" "$stage/usr/local/bin/shoal-builder"
cp "$node_exe" "$stage/usr/local/bin/shoal-node"
cp "$(readlink -f "$git_exe")" "$stage/usr/bin/git"
cp "$git_core/git" "$stage/$git_core/git"
for helper in git-http-backend git-receive-pack git-upload-pack; do
    if [ -e "$git_core/$helper" ]; then
        cp "$(readlink -f "$git_core/$helper")" "$stage/$git_core/$helper"
    fi
done

# Every shared library (and the dynamic loader) the executables name, at the same paths.
libs=$(for exe in "$stage/usr/local/bin/"* "$stage/usr/bin/git" "$stage/$git_core/"*; do
    ldd "$exe" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}'
done | sort -u)
for lib in $libs; do
    mkdir -p "$stage/$(dirname "$lib")"
    cp -L "$lib" "$stage/$lib"
done
# Distributions with a merged /usr resolve /lib64/ld-linux... through a symlink; busybox has no
# /lib64, so the loader is copied to the path the executables name (done above).

box=$(docker create busybox:latest /bin/true)
tar -C "$stage" -c . | docker cp - "$box:/"
docker commit \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/root' \
    --change 'CMD ["/bin/sh"]' \
    --change 'LABEL org.opencontainers.image.title=shoal' \
    "$box" "$tag" >/dev/null
echo "image: $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes; $builder_exe, $node_exe)"

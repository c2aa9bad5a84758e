#!/usr/bin/env bash
# Makes the local base image `busybox:latest` (no registry can be reached): a root filesystem with
# Debian's static busybox and one symlink per applet, imported with `docker import`.
# Idempotent: does nothing when the image exists or when no Docker Engine is reachable.
set -euo pipefail

if ! docker info >/dev/null 2>&1; then
    echo "base-image: no Docker Engine reachable; skipping" >&2
    exit 0
fi
if docker image inspect busybox:latest >/dev/null 2>&1; then
    echo "base-image: busybox:latest present"
    exit 0
fi
if [ ! -x /bin/busybox ]; then
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y busybox-static
    fi
fi
bb=$(command -v busybox || echo /bin/busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/tmp" "$root/etc" \
    "$root/root" "$root/var" "$root/proc" "$root/sys" "$root/dev" "$root/run"
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list-full); do
    [ "$applet" = "bin/busybox" ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
tar -C "$root" -c . | docker import \
    --change 'CMD ["/bin/sh"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - busybox:latest
echo "base-image: imported busybox:latest"

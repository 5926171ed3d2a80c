#!/usr/bin/env bash
# Provision (once) a Debian bullseye chroot with a real Python 2.7, for the GIMP 2.10 adapter
# tests (Debian 12 has no python2.7 package). Usage: provision_py27.sh [ROOT]  (as root).
set -Eeuo pipefail

ROOT="${1:-${NEURAL_RESTORE_PY27_ROOT:-/var/cache/neural-restore/py27-bullseye}}"
MIRROR="${NEURAL_RESTORE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STAMP="$ROOT/.neural-restore-ready"
RECIPE_VERSION=1

ready() { grep -qx "recipe $RECIPE_VERSION" "$STAMP" 2>/dev/null && [[ -x "$ROOT/usr/bin/python2.7" ]]; }
if ready; then echo "ready: $ROOT"; exit 0; fi

[[ $EUID -eq 0 ]] || { echo "must run as root" >&2; exit 1; }
case "$ROOT" in /var/cache/*/*|/opt/*/*|/srv/*/*) ;; *) echo "refusing ROOT '$ROOT'" >&2; exit 1 ;; esac
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9
if ready; then echo "ready: $ROOT"; exit 0; fi
# Nothing is ever mounted under ROOT on the host (tests use a private mount namespace),
# but check before deleting a half-built root anyway.
if grep -q " $ROOT[/ ]" /proc/self/mounts; then echo "mounts under $ROOT, refusing" >&2; exit 1; fi
rm -rf --one-file-system -- "$ROOT"
: >"$ROOT.provision.log"
# A fresh machine may lack debootstrap (the GIMP 3 harness installs it too, but these tests
# can run first): install it from Debian's packages.
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
    { apt-get install -y --no-install-recommends debootstrap || { apt-get update && \
      apt-get install -y --no-install-recommends debootstrap; }; } >>"$ROOT.provision.log" 2>&1 \
        || { tail -n 30 "$ROOT.provision.log" >&2; exit 1; }
fi
# minbase + python2.7-minimal: an interpreter with the stdlib modules the plug-in package uses.
debootstrap --variant=minbase --include=python2.7-minimal,libpython2.7-stdlib bullseye "$ROOT" "$MIRROR" \
    >>"$ROOT.provision.log" 2>&1 || { tail -n 30 "$ROOT.provision.log" >&2; exit 1; }
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
printf 'recipe %s\npython %s\n' "$RECIPE_VERSION" "$(chroot "$ROOT" /usr/bin/python2.7 -c 'import sys; print(sys.version.split()[0])')" >"$STAMP"
echo "done: $ROOT"

#!/usr/bin/env bash
# Provision (once) a Debian trixie chroot holding GIMP 3.0 with Python-Fu, for headless tests.
# Usage: provision_gimp3.sh [ROOT]   (run as root; idempotent; safe to re-run after a crash)
set -Eeuo pipefail

ROOT="${1:-${NEURAL_RESTORE_GIMP_ROOT:-/var/cache/neural-restore/gimp3-trixie}}"
SUITE=trixie
MIRROR="${NEURAL_RESTORE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(gimp python3-gi gir1.2-gimp-3.0)
STAMP_NAME=.neural-restore-ready
# Bump when the recipe below changes: a root stamped with another version is rebuilt.
RECIPE_VERSION=1
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf "[provision-gimp3 +%ss] %s\n" "$SECONDS" "$*"; }
die() { printf '[provision-gimp3] ERROR: %s\n' "$*" >&2; exit 1; }

ready() {
    grep -qx "recipe $RECIPE_VERSION" "$ROOT/$STAMP_NAME" 2>/dev/null &&
        compgen -G "$ROOT/usr/bin/gimp-console*" >/dev/null
}

# Fast path first: re-runs must cost nothing.
if ready; then
    log "ready: $ROOT"
    exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot and mount need it)"
[[ "$ROOT" == /* ]] || die "ROOT must be an absolute path, got '$ROOT'"
ROOT="$(realpath -m -- "$ROOT")"
case "$ROOT" in /|/bin|/boot|/dev|/etc|/home|/lib*|/proc|/root|/run|/sbin|/sys|/tmp|/usr|/var|/var/cache|/work)
    die "refusing to use '$ROOT' as a chroot directory" ;;
/bin/*|/boot/*|/dev/*|/etc/*|/lib*/*|/proc/*|/sbin/*|/sys/*|/usr/*)
    die "refusing to put a chroot inside a system directory: '$ROOT'" ;;
esac

mkdir -p "$(dirname "$ROOT")"
LOG="$ROOT.provision.log"
# Serialise concurrent provisioning (e.g. two pytest runs) on the same ROOT.
exec 9>"$ROOT.lock"
flock 9
if ready; then
    log "ready (provisioned by a concurrent run): $ROOT"
    exit 0
fi

# Mount points at or below ROOT, deepest first (/proc/self/mounts escapes blanks as octal).
mounts_under() {
    local _dev mnt _rest
    while read -r _dev mnt _rest; do
        mnt="$(printf '%b' "$mnt")"
        if [[ "$mnt" == "$ROOT" || "$mnt" == "$ROOT"/* ]]; then printf '%s\n' "$mnt"; fi
    done </proc/self/mounts | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

unmount_all() {
    local m
    while IFS= read -r m; do
        [[ -n "$m" ]] || continue
        umount -- "$m" 2>/dev/null || umount -l -- "$m" 2>/dev/null || true
    done < <(mounts_under)
}

on_error() {
    local rc=$?
    printf '[provision-gimp3] FAILED (exit %s); last lines of %s:\n' "$rc" "$LOG" >&2
    tail -n 40 "$LOG" >&2 2>/dev/null || true
}
trap on_error ERR
trap unmount_all EXIT
: >"$LOG"
t0=$SECONDS

export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap on the host"
    if ! apt-get install -y --no-install-recommends debootstrap >>"$LOG" 2>&1; then
        apt-get update >>"$LOG" 2>&1
        apt-get install -y --no-install-recommends debootstrap >>"$LOG" 2>&1
    fi
fi

# Never delete through a live bind mount: that would destroy the host files behind it.
unmount_all
if [[ -n "$(mounts_under)" ]]; then
    die "mounts remain under $ROOT, refusing to delete it: $(mounts_under | tr '\n' ' ')"
fi
if [[ -e "$ROOT" ]]; then
    log "removing incomplete $ROOT"
    rm -rf --one-file-system -- "$ROOT"
fi

log "debootstrap $SUITE (minbase) into $ROOT"
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >>"$LOG" 2>&1

# Faster dpkg, and no daemons started from maintainer scripts.
echo force-unsafe-io >"$ROOT/etc/dpkg/dpkg.cfg.d/neural-restore-unsafe-io"
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount --make-rslave "$ROOT/dev"   # so unmounting our copy never propagates to the host's /dev

in_chroot() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH="$CHROOT_PATH" LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

log "apt-get install ${PACKAGES[*]} (in chroot)"
in_chroot apt-get update >>"$LOG" 2>&1
in_chroot apt-get install -y --no-install-recommends -o Acquire::Retries=3 "${PACKAGES[@]}" >>"$LOG" 2>&1

# One GIMP start builds its plug-in and font caches, so the first test is not ~7 s slower,
# and proves Python-Fu works.  The environment must match chroot.py's BASE_ENV exactly:
# GIMP re-queries every plug-in whenever the locale changes.
log "warming up GIMP (plug-in and font caches)"
warm="$(chroot "$ROOT" /usr/bin/env -i HOME=/root PATH="$CHROOT_PATH" LANG=C.UTF-8 \
    gimp-console -i --batch-interpreter=python-fu-eval --quit \
    -b 'import gi; gi.require_version("Gimp", "3.0"); from gi.repository import Gimp; print("NR-WARM", Gimp.version())' \
    2>>"$LOG")"
[[ "$warm" == *"NR-WARM 3."* ]] || die "GIMP warm-up failed (output: $warm); see $LOG"

log "cleaning apt caches"
in_chroot apt-get clean >>"$LOG" 2>&1
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT/usr/sbin/policy-rc.d"
mkdir -p "$ROOT/root/.config/GIMP/3.0/plug-ins"

compgen -G "$ROOT/usr/bin/gimp-console*" >/dev/null || die "gimp-console missing after install"
version="$(in_chroot dpkg-query -W -f '${Version}' gimp)"

unmount_all
trap - EXIT
[[ -z "$(mounts_under)" ]] || die "could not unmount: $(mounts_under | tr '\n' ' ')"

printf 'recipe %s\ngimp %s\nprovisioned %s\n' "$RECIPE_VERSION" "$version" "$(date -u +%FT%TZ)" >"$ROOT/$STAMP_NAME"
log "done: gimp $version in $((SECONDS - t0)) s ($(du -sh --one-file-system "$ROOT" | cut -f1))"

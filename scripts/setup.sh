#!/usr/bin/env bash
# Installs what vmthunder and its tests need on a fresh Debian 12 machine, then builds the test
# guest (scripts/build-guest.sh). Idempotent and non-interactive; when everything is already
# installed it does not touch apt at all.
#
#   QEMU 10 (qemu-system-x86, qemu-block-extra) from the backports suite, with
#   --no-install-recommends, so the preinstalled qemu-utils 10 (qemu-img, qemu-storage-daemon)
#   stays: the plain bookworm qemu-system-x86 (7.2) would replace it. The backports source is
#   derived from /etc/apt/sources.list.d/debian.sources (same URIs and keyring) into
#   /etc/apt/sources.list.d/vmthunder-backports.sources.
#   busybox-static, libnbd-bin (nbdinfo), iproute2, cpio, zstd, xz-utils from the main suite;
#   openssh-client and openssh-server for the ssh transport and its test bed
#   (scripts/testbed.sh starts its own sshds; the system's is not started).
#   ovmf (UEFI firmware for clones with firmware: uefi) and genisoimage (the cloud-init
#   NoCloud seed ISOs) for clones of a user-supplied disk image.
#   postgresql (PostgreSQL 15: initdb, postgres, pg_ctl, psql) for the PostgreSQL state tests,
#   which start private servers of their own (tests/common/pg.rs) as its `postgres` user, with
#   test certificates made by the openssl CLI it depends on; the package's own cluster
#   (15/main) is neither used nor needed.
#
# Usage: scripts/setup.sh [GUEST_OUTDIR]   (passed on to build-guest.sh)
# Environment: VMTHUNDER_SKIP_GUEST=1 skips the guest build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

log() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

# command (or, given as an absolute path, a file) -> package providing it
main_pkgs=(busybox-static libnbd-bin iproute2 cpio zstd xz-utils openssh-client openssh-server
    ovmf genisoimage postgresql python3)
main_cmds=(busybox nbdinfo ip cpio zstd xz ssh /usr/sbin/sshd
    /usr/share/OVMF/OVMF_CODE_4M.fd genisoimage /usr/lib/postgresql/15/bin/initdb python3)
qemu_pkgs=(qemu-system-x86 qemu-block-extra)
qemu_cmds=(qemu-system-x86_64 qemu-storage-daemon qemu-img qemu-nbd qemu-io)

# qemu_major CMD: prints the major version CMD reports, or nothing.
qemu_major() {
    "$1" --version 2>/dev/null | sed -n 's/.* version \([0-9][0-9]*\)\..*/\1/p' | awk 'NR == 1'
}

# dpkg_ok PKG...: every PKG is installed.
dpkg_ok() {
    local p
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || return 1
    done
}

# have CMD: CMD is a command; an absolute path may also name a plain file (firmware).
have() {
    case $1 in
        /*) [ -x "$1" ] || [ -f "$1" ] ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

cmds_ok() {
    local c
    for c in "$@"; do have "$c" || return 1; done
}

qemu_ok() {
    cmds_ok "${qemu_cmds[@]}" && dpkg_ok "${qemu_pkgs[@]}" \
        && [ "$(qemu_major qemu-system-x86_64)" -ge 10 ] 2>/dev/null \
        && [ "$(qemu_major qemu-storage-daemon)" -ge 10 ] 2>/dev/null
}

main_ok() {
    cmds_ok "${main_cmds[@]}" && dpkg_ok "${main_pkgs[@]}"
}

# Writes the backports source next to debian.sources (deb822) or, on an old-style machine,
# from /etc/apt/sources.list. Sets bp_changed=1 when the file was (re)written.
bp_changed=0
write_backports_source() {
    local codename src dst tmp
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"
    src=/etc/apt/sources.list.d/debian.sources
    dst=/etc/apt/sources.list.d/vmthunder-backports.sources
    tmp=$(mktemp)
    if [ -r "$src" ]; then
        # The first "deb" stanza whose Suites list the plain codename (the main archive, not
        # -security): keep its URIs, Components and Signed-By.
        awk -v want="$codename" '
            function flush() {
                if (!done && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uris != "") {
                    print "# Derived by vmthunder scripts/setup.sh from debian.sources"
                    print "Types: deb"
                    print "URIs: " uris
                    print "Suites: " want "-backports"
                    print "Components: " (comps != "" ? comps : "main")
                    if (signed != "") print "Signed-By: " signed
                    done = 1
                }
                types = ""; uris = ""; suites = ""; comps = ""; signed = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0; next }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0; next }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0; next }
            /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0; next }
            /^Signed-By:/ { sub(/^Signed-By:[ \t]*/, ""); signed = $0; next }
            END { flush() }
        ' "$src" >"$tmp"
    elif [ -r /etc/apt/sources.list ]; then
        awk -v want="$codename" '
            !done && $1 == "deb" {
                i = 2; opts = ""
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
                if ($(i + 1) == want) {
                    signed = ""
                    if (match(opts, /signed-by=[^] ]*/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
                    comps = ""; for (j = i + 2; j <= NF; j++) comps = comps (comps == "" ? "" : " ") $j
                    print "# Derived by vmthunder scripts/setup.sh from sources.list"
                    print "Types: deb"
                    print "URIs: " $i
                    print "Suites: " want "-backports"
                    print "Components: " (comps != "" ? comps : "main")
                    if (signed != "") print "Signed-By: " signed
                    done = 1
                }
            }
        ' /etc/apt/sources.list >"$tmp"
    fi
    if [ ! -s "$tmp" ]; then
        rm -f "$tmp"
        die "found no '$codename' deb source in $src or /etc/apt/sources.list to derive backports from"
    fi
    if [ -f "$dst" ] && cmp -s "$tmp" "$dst"; then
        rm -f "$tmp"
    else
        install -m 0644 "$tmp" "$dst"
        rm -f "$tmp"
        bp_changed=1
        log "wrote $dst"
    fi
}

has_backports_candidate() {
    # Not "| grep -q": with pipefail, apt-cache's SIGPIPE would make the pipeline fail.
    case "$(apt-cache madison qemu-system-x86 2>/dev/null)" in
        *-backports/*) return 0 ;;
        *) return 1 ;;
    esac
}

export DEBIAN_FRONTEND=noninteractive
# --no-remove: fail instead of removing anything (e.g. the preinstalled qemu-utils 10).
apt_install=(apt-get install -y -q --no-install-recommends --no-remove
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

if qemu_ok && main_ok; then
    log "packages already installed (QEMU $(qemu_major qemu-system-x86_64).x)"
else
    [ "$(id -u)" = 0 ] || die "packages are missing; run as root (or install them yourself)"
    command -v apt-get >/dev/null || die "apt-get not found: this script expects Debian 12"
    updated=0
    if ! qemu_ok; then
        write_backports_source
        if [ "$bp_changed" = 1 ] || ! has_backports_candidate; then
            log "apt-get update (backports source added)"
            apt-get update -q >/dev/null
            updated=1
        fi
        has_backports_candidate || die "no qemu-system-x86 in the backports suite after apt-get update"
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        log "installing ${qemu_pkgs[*]} from $codename-backports"
        "${apt_install[@]}" -t "$codename-backports" "${qemu_pkgs[@]}" >/dev/null
    fi
    if ! main_ok; then
        log "installing ${main_pkgs[*]}"
        if ! "${apt_install[@]}" "${main_pkgs[@]}" >/dev/null 2>&1; then
            if [ "$updated" = 0 ]; then
                log "apt-get update (install failed with the current lists)"
                apt-get update -q >/dev/null
            fi
            "${apt_install[@]}" "${main_pkgs[@]}" >/dev/null
        fi
    fi
fi

# Verify, loudly.
for c in "${qemu_cmds[@]}" "${main_cmds[@]}"; do
    have "$c" || die "$c is still missing after installing"
done
for c in qemu-system-x86_64 qemu-storage-daemon qemu-img; do
    v=$("$c" --version 2>/dev/null | awk 'NR == 1')
    case "$(qemu_major "$c")" in
        1[0-9] | [2-9][0-9]) ;;
        *) die "$c reports '$v', need QEMU 10.x (the backports build)" ;;
    esac
done
log "$(qemu-system-x86_64 --version | awk 'NR == 1')"

if [ "${VMTHUNDER_SKIP_GUEST:-0}" = 1 ]; then
    log "skipping the guest build (VMTHUNDER_SKIP_GUEST=1)"
else
    log "building the test guest"
    "$here/build-guest.sh" "$@"
fi
log "done"

#!/usr/bin/env bash
# Builds the tiny vmthunder test guest from Debian packages:
#   OUTDIR/vmlinuz          the Debian cloud kernel (linux-image-<abi>-cloud-amd64)
#   OUTDIR/initrd.img       gzip'd newc cpio: static busybox, scripts/guest-init.sh as /init,
#                           the virtio modules (pci, blk, net) with their dependencies
#   OUTDIR/base.raw         64 MiB of random bytes, the base disk image (made once)
#   OUTDIR/base.raw.sha256  its sha256, hex digest only
# Downloaded .debs are cached in OUTDIR/debs. Idempotent: finished outputs are kept unless
# their inputs (package versions, the init script, this script) changed.
#
# Usage: scripts/build-guest.sh [OUTDIR]
#   Default OUTDIR: ${VMTHUNDER_CACHE:-/var/cache/vmthunder}/guest, built once per machine
#   outside the git clone (one build at a time, under a lock), with <repo>/target/guest made
#   a symlink to it; the keys above decide what is rebuilt there.
# Environment: VMTHUNDER_BASE_MIB (size of a NEW base.raw, default 64),
#              VMTHUNDER_KERNEL_PKG (a linux-image-* package to use instead of the current
#              linux-image-cloud-amd64 dependency).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
if [ $# -ge 1 ]; then
    out=$1
    link=
else
    out=$(realpath -m "${VMTHUNDER_CACHE:-/var/cache/vmthunder}")/guest
    link=$repo/target/guest
fi
init_src=$here/guest-init.sh
base_mib=${VMTHUNDER_BASE_MIB:-64}
# Wanted modules; their dependencies are added from each module's .modinfo.
wanted_modules=(virtio_pci virtio_blk virtio_net)

log() { echo "build-guest: $*"; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

for c in apt-get apt-cache dpkg-deb tar gzip sha256sum find sort; do
    command -v "$c" >/dev/null || die "missing command: $c"
done
[ -r "$init_src" ] || die "missing $init_src"

mkdir -p "$out/debs"
out=$(cd "$out" && pwd)
debs=$out/debs
# One build in OUTDIR at a time (checkouts of one machine share the cached one).
exec 8>"$out/.lock"
flock 8
if [ -n "$link" ] && [ "$(readlink "$link" 2>/dev/null)" != "$out" ]; then
    # A directory left by an older version of this script is a build output: replace it.
    if [ -d "$link" ] && [ ! -L "$link" ]; then rm -rf "$link"; fi
    mkdir -p "$(dirname "$link")"
    ln -sfn "$out" "$link"
fi

work=
cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap cleanup EXIT

apt_opts=(-q)
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

# fetch_deb PACKAGE: prints the path of the cached .deb of PACKAGE's candidate version,
# downloading it into $debs if needed. Without apt lists, falls back to the newest cached one.
fetch_deb() {
    local pkg=$1 ver file
    ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | awk 'NR == 1')
    if [ -n "$ver" ]; then
        file=$debs/${pkg}_${ver//:/%3a}_amd64.deb
        if [ ! -s "$file" ]; then
            log "downloading $pkg $ver" >&2
            (cd "$debs" && apt-get "${apt_opts[@]}" download "$pkg=$ver" >/dev/null) \
                || die "apt-get download $pkg=$ver failed"
            [ -s "$file" ] || die "downloaded $pkg but $file is missing"
        fi
    else
        file=$(ls -1 "$debs/${pkg}"_*_amd64.deb 2>/dev/null | sort -V | tail -n1 || true)
        [ -n "$file" ] || die "apt knows no package $pkg and none is cached in $debs"
        log "apt has no candidate for $pkg; using cached $(basename "$file")" >&2
    fi
    echo "$file"
}

# --- up to date? ----------------------------------------------------------------------------
# The local inputs (init script, this script, module list, kernel override) are hashed; the
# package versions are only looked up again when apt's lists changed since the last build
# (each apt-cache call costs ~0.7 s on machines whose apt pkgcache is disabled).
local_key=$(
    {
        echo "modules=${wanted_modules[*]} kernel_pkg=${VMTHUNDER_KERNEL_PKG:-}"
        sha256sum <"$init_src"
        sha256sum <"$0"
    } | sha256sum | cut -d' ' -f1
)
keyfile=$out/.guest.key
fresh=0
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -f "$keyfile" ] \
    && [ "$(cut -d' ' -f1 "$keyfile")" = "$local_key" ] \
    && [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -newer "$keyfile" 2>/dev/null)" ]; then
    fresh=1
fi

if [ "$fresh" = 1 ]; then
    log "vmlinuz and initrd.img are up to date ($(cut -d' ' -f2 "$keyfile"))"
else
    # --- which kernel ---------------------------------------------------------------------
    kpkg=${VMTHUNDER_KERNEL_PKG:-}
    resolve_kernel() {
        apt-cache depends linux-image-cloud-amd64 2>/dev/null \
            | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | awk 'NR == 1'
        true
    }
    [ -n "$kpkg" ] || kpkg=$(resolve_kernel)
    if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
        # No package lists (a fresh or cleaned machine): fetch them once.
        log "apt-get update (linux-image-cloud-amd64 is not in the package lists)"
        apt-get update -q >/dev/null || true
        kpkg=$(resolve_kernel)
    fi
    if [ -z "$kpkg" ]; then
        cached=$(ls -1 "$debs"/linux-image-*-cloud-amd64_*_amd64.deb 2>/dev/null | sort -V | tail -n1 || true)
        [ -n "$cached" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update?) and no kernel is cached"
        kpkg=$(basename "$cached"); kpkg=${kpkg%%_*}
    fi
    kdeb=$(fetch_deb "$kpkg")
    bdeb=$(fetch_deb busybox-static)
    key="$local_key $(basename "$kdeb") $(basename "$bdeb")"
fi

if [ "$fresh" = 1 ]; then
    :
elif [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ "$(cat "$keyfile" 2>/dev/null)" = "$key" ]; then
    touch "$keyfile"
    log "vmlinuz and initrd.img are up to date ($(basename "$kdeb"))"
else
    work=$(mktemp -d "$out/.work.XXXXXX")
    log "unpacking $(basename "$kdeb")"
    mkdir -p "$work/k" "$work/bb" "$work/root"
    dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$work/k" ./boot/ ./lib/modules/
    dpkg-deb --fsys-tarfile "$bdeb" | tar -x -C "$work/bb" ./bin/busybox
    vmlinuz=$(ls -1 "$work"/k/boot/vmlinuz-* | awk 'NR == 1')
    kver=${vmlinuz##*/vmlinuz-}
    moddir=$work/k/lib/modules/$kver
    [ -d "$moddir" ] || die "no modules for $kver in $(basename "$kdeb")"

    root=$work/root
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,lib/modules}
    cp "$work/bb/bin/busybox" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cp "$init_src" "$root/init"
    chmod 0755 "$root/init"
    if [ "$(id -u)" = 0 ]; then
        mknod -m 0600 "$root/dev/console" c 5 1
        mknod -m 0666 "$root/dev/null" c 1 3
    fi

    # Module name (with '_') -> file, for every module the package ships (maybe compressed).
    declare -A mod_file=() builtin=() seen=()
    while IFS= read -r f; do
        b=${f##*/}; b=${b%.ko*}; b=${b//-/_}
        mod_file[$b]=$f
    done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    if [ -f "$moddir/modules.builtin" ]; then
        while IFS= read -r f; do
            b=${f##*/}; b=${b%.ko*}; b=${b//-/_}
            builtin[$b]=1
        done <"$moddir/modules.builtin"
    fi
    order=()
    # add_module NAME: copies NAME (decompressed) after its dependencies; built-ins are skipped.
    add_module() {
        local m=$1 f dst deps d
        [ -z "${seen[$m]:-}" ] || return 0
        seen[$m]=1
        f=${mod_file[$m]:-}
        if [ -z "$f" ]; then
            [ -n "${builtin[$m]:-}" ] && return 0
            die "kernel module $m is neither in $(basename "$kdeb") nor built in"
        fi
        dst=$root/lib/modules/$m.ko
        case "$f" in
            *.ko.xz) xz -dc "$f" >"$dst" ;;
            *.ko.zst) zstd -qdc "$f" >"$dst" ;;
            *.ko.gz) gzip -dc "$f" >"$dst" ;;
            *) cp "$f" "$dst" ;;
        esac
        deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | awk 'NR == 1')
        local IFS=,
        for d in $deps; do
            [ -z "$d" ] || add_module "${d//-/_}"
        done
        order+=("$m.ko")
    }
    for m in "${wanted_modules[@]}"; do add_module "$m"; done
    printf '%s\n' "${order[@]}" >"$root/lib/modules/load.order"
    log "modules (load order): ${order[*]%.ko}"

    if command -v cpio >/dev/null && [[ "$(cpio --version 2>/dev/null)" == *GNU* ]]; then
        cpio_cmd=(cpio --quiet -o -H newc -R 0:0)
    else
        cpio_cmd=("$work/bb/bin/busybox" cpio -o -H newc -R 0:0)
    fi
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "${cpio_cmd[@]}") | gzip -n -9 >"$work/initrd.img"
    cp "$vmlinuz" "$work/vmlinuz"
    mv -f "$work/vmlinuz" "$out/vmlinuz"
    mv -f "$work/initrd.img" "$out/initrd.img"
    echo "$key" >"$keyfile"
    echo "$kver" >"$out/kernel.version"
    log "built vmlinuz ($kver) and initrd.img ($(($(stat -c %s "$out/initrd.img") / 1024)) KiB)"
fi

# --- base.raw -------------------------------------------------------------------------------
if [ ! -s "$out/base.raw" ]; then
    log "creating base.raw (${base_mib} MiB of random data)"
    head -c "${base_mib}M" /dev/urandom >"$out/base.raw.tmp"
    mv -f "$out/base.raw.tmp" "$out/base.raw"
fi
if [ ! -s "$out/base.raw.sha256" ] || [ "$out/base.raw" -nt "$out/base.raw.sha256" ]; then
    sha256sum "$out/base.raw" | cut -d' ' -f1 >"$out/base.raw.sha256.tmp"
    mv -f "$out/base.raw.sha256.tmp" "$out/base.raw.sha256"
fi

echo "kernel:  $out/vmlinuz"
echo "initrd:  $out/initrd.img"
echo "base:    $out/base.raw"
echo "sha256:  $out/base.raw.sha256 ($(cat "$out/base.raw.sha256"))"

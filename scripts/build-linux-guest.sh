#!/usr/bin/env bash
# Builds the Debian 12 guest the linux stack's end-to-end test boots under QEMU (TCG): a real
# kernel with device-mapper (dm-cache, dm-snapshot) and iSCSI (iscsi_tcp), lvm2, dmsetup,
# open-iscsi, tgt, libvirt with its QEMU driver, and sshd, all from Debian packages
# (mmdebstrap, the mirror this machine's apt already uses), and targetcli-fb for the LIO option.
#
# Output in OUTDIR (default target/linux-guest), nothing of it committed:
#   rootfs.img   ext4 root file system (sparse); each guest boots a qcow2 overlay of it
#   vmlinuz, initrd.img
#   id_ed25519   the key whose public half is root's authorized key in the guest
#   versions.txt the versions of the tools inside (the parser fixtures name them)
#
# Each guest configures itself from its kernel command line at boot (vmt-guest.service):
#   vmt.name=NAME  hostname, and the iSCSI initiator name iqn.2014-12.org.vmthunder.test:NAME
#                  (every host needs its own; a shared one knocks sessions off)
#   vmt.ip=A/N     the address of its first Ethernet interface, vmt.gw=G its default route
#
# Usage: scripts/build-linux-guest.sh [OUTDIR]     (root; about 3-10 minutes, ~1.5 GB)
#   Default OUTDIR: ${VMTHUNDER_CACHE:-/var/cache/vmthunder}/linux-guest/KEY, built once per
#   machine outside the git clone, KEY the first 16 hex digits of the SHA-256 of this script
#   and the apt sources the packages come from; <repo>/target/linux-guest is made a symlink
#   to it. One build per KEY at a time (a second run waits on a lock, then finds it done).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
log() { echo "build-linux-guest: $*"; }
die() { echo "build-linux-guest: error: $*" >&2; exit 1; }

sources_file=/etc/apt/sources.list.d/debian.sources
[ -r "$sources_file" ] || sources_file=/etc/apt/sources.list
if [ $# -ge 1 ]; then
    out=$1
    link=
else
    key=$({ sha256sum <"$0"; cat "$sources_file" 2>/dev/null || true; } | sha256sum | cut -c1-16)
    out=$(realpath -m "${VMTHUNDER_CACHE:-/var/cache/vmthunder}")/linux-guest/$key
    link=$(cd "$here/.." && pwd)/target/linux-guest
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# link: target/linux-guest -> the cached build (a directory an older version of this script
# built there is a build output, and is replaced).
link() {
    [ -n "$link" ] || return 0
    [ "$(readlink "$link" 2>/dev/null)" != "$out" ] || return 0
    if [ -d "$link" ] && [ ! -L "$link" ]; then rm -rf "$link"; fi
    mkdir -p "$(dirname "$link")"
    ln -sfn "$out" "$link"
}
built() {
    [ -s "$out/rootfs.img" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] \
        && [ -s "$out/id_ed25519" ] && [ -s "$out/versions.txt" ]
}

# A keyed build is current by its key; one in a given OUTDIR while newer than this script.
if built && { [ -n "$link" ] || [ "$out/rootfs.img" -nt "$0" ]; }; then
    link
    log "up to date in $out"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap's root mode)"
exec 9>"$out/.lock"
flock 9
if built && [ -n "$link" ]; then
    link
    log "up to date in $out (built meanwhile)"
    exit 0
fi
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

# The mirror this machine uses (never written into the repository).
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk 'NR == 1')
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"

[ -s "$out/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C vmthunder-linux-guest -f "$out/id_ed25519"

pkgs=(systemd-sysv udev dbus kmod iproute2 procps e2fsprogs openssh-server
      linux-image-amd64 initramfs-tools
      lvm2 dmsetup thin-provisioning-tools open-iscsi tgt targetcli-fb
      libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86)

root=$(mktemp -d /var/tmp/vmthunder-linux-guest.XXXXXX)
trap 'rm -rf "$root"' EXIT

cat >"$root.setup" <<'EOF'
#!/bin/sh
# vmt-guest: this guest's name, address and iSCSI initiator name, from the kernel command line.
set -eu
for a in $(cat /proc/cmdline); do
    case $a in
        vmt.name=*) name=${a#vmt.name=} ;;
        vmt.ip=*) ip=${a#vmt.ip=} ;;
        vmt.gw=*) gw=${a#vmt.gw=} ;;
    esac
done
if [ -n "${name:-}" ]; then
    hostname "$name"
    echo "$name" >/etc/hostname
    echo "InitiatorName=iqn.2014-12.org.vmthunder.test:$name" >/etc/iscsi/initiatorname.iscsi
fi
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set lo up
if [ -n "${ip:-}" ] && [ -n "$dev" ]; then
    ip link set "$dev" up
    ip addr replace "$ip" dev "$dev"
    [ -z "${gw:-}" ] || ip route replace default via "$gw"
fi
EOF

log "mmdebstrap bookworm from $mirror into $root (this takes several minutes)"
mmdebstrap --mode=root --variant=apt --components=main \
    --aptopt='APT::Install-Recommends "false"' \
    --include="$(IFS=,; echo "${pkgs[*]}")" \
    --customize-hook="install -m 0755 '$root.setup' \"\$1/usr/local/sbin/vmt-guest\"" \
    --customize-hook="install -d -m 0700 \"\$1/root/.ssh\" && install -m 0600 '$out/id_ed25519.pub' \"\$1/root/.ssh/authorized_keys\"" \
    --customize-hook='cat >"$1/etc/systemd/system/vmt-guest.service" <<EOS
[Unit]
Description=vmthunder test guest identity and address
DefaultDependencies=no
After=systemd-remount-fs.service
Before=network.target ssh.service iscsid.service iscsid.socket open-iscsi.service tgt.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmt-guest
RemainAfterExit=yes
[Install]
WantedBy=sysinit.target
EOS' \
    --customize-hook='chroot "$1" systemctl enable vmt-guest.service' \
    --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer libvirt-guests.service lvm2-monitor.service systemd-timesyncd.service' \
    --customize-hook='printf "iscsi_tcp\ndm_cache\ndm_cache_smq\ndm_snapshot\n" >"$1/etc/modules-load.d/vmthunder.conf"' \
    --customize-hook='printf "/dev/vda / ext4 defaults 0 1\n" >"$1/etc/fstab"' \
    --customize-hook='echo "root:" | chroot "$1" chpasswd -e' \
    --customize-hook='rm -f "$1/etc/iscsi/initiatorname.iscsi" "$1/etc/ssh/ssh_host_"*; chroot "$1" ssh-keygen -A' \
    --customize-hook='sed -i "s/^#\?UseDNS.*/UseDNS no/" "$1/etc/ssh/sshd_config"' \
    --customize-hook='rm -rf "$1/usr/share/doc" "$1/usr/share/man" "$1/var/cache/apt/archives"/*.deb "$1/lib/modules"/*/kernel/drivers/gpu "$1/lib/modules"/*/kernel/sound "$1/lib/modules"/*/kernel/drivers/net/wireless "$1/lib/modules"/*/kernel/drivers/media' \
    --customize-hook="chroot \"\$1\" sh -c 'dpkg-query -W -f=\"\\\${Package} \\\${Version}\\n\" lvm2 dmsetup open-iscsi tgt targetcli-fb libvirt-clients libvirt-daemon qemu-system-x86 linux-image-amd64 thin-provisioning-tools' >'$out/versions.txt'" \
    --customize-hook='chroot "$1" depmod -a $(ls "$1/lib/modules")' \
    --customize-hook='printf "MODULES=list\nCOMPRESS=gzip\n" >"$1/etc/initramfs-tools/conf.d/vmthunder.conf"; printf "virtio_pci\nvirtio_blk\nvirtio_net\next4\n" >>"$1/etc/initramfs-tools/modules"' \
    --customize-hook='chroot "$1" update-initramfs -u -k all' \
    bookworm "$root" "$mirror"
rm -f "$root.setup"

cp -L "$root/vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
cp -L "$root/initrd.img" "$out/initrd.img.tmp" && mv "$out/initrd.img.tmp" "$out/initrd.img"
log "making the ext4 root file system"
rm -f "$out/rootfs.img.tmp"
truncate -s 3G "$out/rootfs.img.tmp"
mkfs.ext4 -q -F -L vmt-root -d "$root" "$out/rootfs.img.tmp"
mv "$out/rootfs.img.tmp" "$out/rootfs.img"
link
log "done: $out ($(du -sh --apparent-size "$out/rootfs.img" | cut -f1) apparent, $(du -sh "$out/rootfs.img" | cut -f1) used)"
cat "$out/versions.txt"

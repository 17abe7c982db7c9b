#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) disk image of the kind users bring to a cloud, from Debian
# packages only (mmdebstrap, the mirror this machine's apt already uses), for vmthunder's
# examples and tests that boot clones of a user-supplied image.
#
# The image (qcow2, zlib-compressed, virtual size 2 GiB = 2147483648 bytes):
#   GPT: partition 14 BIOS boot (1-4 MiB, GRUB i386-pc core.img), 15 EFI system partition
#   (4-128 MiB, FAT32, GRUB x86_64-efi as the removable path EFI/BOOT/BOOTX64.EFI: no NVRAM
#   entry needed), 1 ext4 root (128 MiB to the end, so cloud-init's growpart can grow it).
#   GRUB finds the root by file system UUID and reads /boot/grub/grub.cfg from it, the kernel
#   gets root=UUID=... console=tty0 console=ttyS0,115200; GRUB itself is on serial too
#   (timeout 1 s, menu hidden: Esc shows it).
#   linux-image-amd64 (not -cloud-amd64: that one has no AHCI driver, so on QEMU's q35 machine,
#   vmthunder's, a seed ISO attached as a CD-ROM is invisible), its modules for sound, GPUs,
#   media, wireless, Bluetooth, InfiniBand and the like deleted; a small initramfs with the
#   virtio, SCSI, AHCI/PIIX (CD-ROM), NVMe, Xen and Hyper-V disk drivers.
#   systemd, cloud-init (datasource NoCloud, then None; networkd renderer), systemd-networkd
#   + systemd-resolved, openssh-server, sudo, iproute2, iputils-ping, cloud-guest-utils.
#   No password for any user (root is locked), no SSH keys. sshd's host keys (ed25519 and
#   ecdsa) and /etc/machine-id are made at first boot, so every clone gets its own: by
#   cloud-init's ssh module for each new instance-id, and before sshd starts if there are none
#   (a boot without cloud-init).
#   No recommends, no docs/man pages/translations (dpkg path-excludes, kept in the image for
#   later installs), no apt lists or caches; timers and units a short-lived clone does not
#   need are masked, cloud-init's module lists are cut down to what works in this image.
#   cloud-init: a NoCloud seed (volume label cidata: an ISO as a CD-ROM or a virtio disk)
#   with meta-data, user-data and network-config (v1 or v2; v2 `match: {macaddress}` and
#   `set-name` work). Without `users:` in user-data cloud-init makes the user `debian`
#   (locked, sudo without password) for ssh_authorized_keys. A static-only interface should
#   say `accept-ra: false` (honoured here, see the networkd renderer fix below): otherwise the
#   boot waits 10 s for an IPv6 router advertisement.
#
# Cache (built once per machine, outside the git clone):
#   ${VMTHUNDER_CACHE:-/var/cache/vmthunder}/cloud-image/KEY/debian-12.qcow2
#   KEY = the first 16 hex digits of the SHA-256 of this script, the package list, the suite,
#   the architecture and the apt sources the packages come from. When that file exists the
#   script only (re)makes the symlink below and prints the path; it is written under a
#   temporary name and renamed when complete, and concurrent runs wait on a lock.
#   The host's own tool versions (GRUB, mmdebstrap, e2fsprogs) are not in the key: delete the
#   KEY directory to rebuild with new ones.
#   target/cloud-image/debian-12.qcow2 (repo-relative, git-ignored) is made a symlink to it,
#   and target/cloud-image/id_ed25519{,.pub} a login key for examples/cloud.json if missing.
#   The absolute cached path is the last line on stdout; progress goes to stderr.
#
# How the disk is put together without mounting anything (this machine's kernel has no
# device-mapper, and `losetup -P` makes no /dev/loopNpM nodes without udev): each file system
# is made in its own file (mkfs.ext4 -d fills the ext4 from the mmdebstrap directory; the FAT
# is filled with mtools), then copied into a sparse raw disk at its partition's offset. GRUB's
# images are made with grub-mkimage, each with a small embedded config that searches the root
# by UUID. For BIOS, grub-bios-setup cannot be used on an image file (it insists on finding the
# host device behind its --directory and fails), so the script does what it does: boot.img's
# first 440 bytes go into the MBR (the protective partition table after them stays), patched
# with the sector of core.img (offset 0x5c) and with the boot-drive check NOPed out (0x66, as
# for any hard disk); core.img goes into the BIOS boot partition with the first sector of its
# remaining blocks patched into its blocklist (offset 0x1f4; the length is already right).
#
# Needs root (mmdebstrap's root mode); installs what it lacks with apt-get (mmdebstrap,
# gdisk, dosfstools, mtools, grub-pc-bin, grub-efi-amd64-bin, e2fsprogs, qemu-utils).
# Usage: scripts/build-cloud-image.sh        (2-4 minutes cold, ~2.5 GB in /var/tmp meanwhile)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"

log() { echo "build-cloud-image: $*" >&2; }
die() { echo "build-cloud-image: error: $*" >&2; exit 1; }

suite=bookworm
arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || die "builds an amd64 image; this machine is $arch"

# What goes into the image (with their hard dependencies, no recommends).
pkgs=(systemd-sysv udev dbus kmod procps netbase
      linux-image-amd64 initramfs-tools e2fsprogs
      cloud-init cloud-guest-utils
      systemd-resolved iproute2 iputils-ping openssh-server sudo)

# Kernel module directories (under /lib/modules/VERSION/kernel) no cloud VM needs; a module
# there that a kept module depends on (modules.dep) stays.
prune_modules=(sound drivers/media drivers/gpu/drm/amd drivers/gpu/drm/radeon
    drivers/gpu/drm/nouveau drivers/gpu/drm/i915 drivers/gpu/drm/gma500
    drivers/net/wireless net/wireless net/mac80211 net/bluetooth drivers/bluetooth
    drivers/infiniband net/rds drivers/iio drivers/staging drivers/comedi drivers/isdn
    drivers/mtd drivers/mmc drivers/memstick drivers/nfc net/nfc drivers/net/can net/can
    drivers/net/ieee802154 net/ieee802154 drivers/thunderbolt drivers/w1 drivers/leds
    net/batman-adv)
# The initramfs gets these (and what they need): ext4 (a module in this kernel) and the
# drivers of a root disk on virtio, SCSI, SATA/IDE, NVMe, Xen or Hyper-V, and of the seed
# CD-ROM (so it is there before cloud-init looks for it).
initrd_modules=(ext4 crc32c_generic crc32c_intel
    virtio_pci virtio_blk virtio_scsi sd_mod sr_mod ahci ata_piix nvme
    xen_blkfront hv_storvsc vmw_pvscsi)

# The apt sources this machine uses (never written into the repository): mmdebstrap pastes
# the file into the image, so its packages come from the same mirror, updates and security.
sources=""
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then sources=$f; break; fi
done
[ -n "$sources" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"

key=$({
    sha256sum <"$self"
    printf 'suite %s\narch %s\n' "$suite" "$arch"
    printf 'pkg %s\n' "${pkgs[@]}"
    printf 'sources %s\n' "$sources"
    grep -v '^[[:space:]]*#' "$sources" || true
} | sha256sum | cut -c1-16)
cache_root=$(realpath -m "${VMTHUNDER_CACHE:-/var/cache/vmthunder}")
cache=$cache_root/cloud-image/$key
img=$cache/debian-12.qcow2

# link: target/cloud-image/debian-12.qcow2 -> the cached image, and the example login key
# (target/cloud-image/id_ed25519, made once per checkout, never in the image: clones get its
# public half only through cloud-init, as examples/cloud.json does); then the path on stdout.
link() {
    local t=$repo/target/cloud-image
    if [ "$(readlink "$t/debian-12.qcow2" 2>/dev/null)" != "$img" ] \
        && ! { mkdir -p "$t" && ln -sfn "$img" "$t/debian-12.qcow2"; } 2>/dev/null; then
        log "warning: cannot make $t/debian-12.qcow2 (read-only checkout?)"
    elif [ ! -s "$t/id_ed25519.pub" ] && command -v ssh-keygen >/dev/null; then
        rm -f "$t/id_ed25519"
        ssh-keygen -q -t ed25519 -N '' -C vmthunder-example -f "$t/id_ed25519" </dev/null \
            || log "warning: cannot make the example key $t/id_ed25519"
    fi
    log "image: $img"
    echo "$img"
}

if [ -s "$img" ]; then
    link
    exit 0
fi

[ "$(id -u)" = 0 ] || die "no cached image at $img; building one needs root (mmdebstrap's root mode)"
mkdir -p "$cache"
# One build per key at a time; a second run waits, then finds the image.
exec 9>"$cache/.lock"
flock 9
if [ -s "$img" ]; then
    link
    exit 0
fi

# Build tools, installed when missing (command or file -> package).
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v sgdisk >/dev/null || need+=(gdisk)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
[ -s /usr/lib/grub/i386-pc/boot.img ] && command -v grub-mkimage >/dev/null || need+=(grub-pc-bin)
[ -s /usr/lib/grub/x86_64-efi/linux.mod ] || need+=(grub-efi-amd64-bin)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
        log "apt-get update (install failed with the current lists)"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    fi
fi

start=$(date +%s)
work=$(mktemp -d /var/tmp/vmthunder-cloud-image.XXXXXX)
chmod 0755 "$work"   # apt's _apt user downloads into it
# --one-file-system: never follow a mount mmdebstrap might have left behind after a failure.
trap 'rm -rf --one-file-system "$work"; rm -f "$img.tmp.$$"' EXIT
root=$work/root

# Identities of the file systems: GRUB, the kernel command line and fstab name them.
root_uuid=$(cat /proc/sys/kernel/random/uuid)
esp_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n' | tr a-f A-F)
esp_uuid=${esp_id:0:4}-${esp_id:4:4}

# Runs inside mmdebstrap once the packages are installed, with /proc, /sys and /dev mounted
# in the chroot: $1 the chroot, $2 the root UUID, $3 the ESP UUID, $4 the module dirs to
# delete, $5 the initramfs modules (space-separated).
cat >"$work/customize.sh" <<'EOF'
#!/bin/sh
set -eu
r=$1 root_uuid=$2 esp_uuid=$3 prune=$4 initrd_modules=$5

echo debian >"$r/etc/hostname"
chmod 0644 "$r/etc/hostname"
cat >"$r/etc/hosts" <<EOS
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOS
# No locales are generated: C.UTF-8 (in libc) is the system locale, and cloud-init's locale
# module, seeing it already set, does not run locale-gen.
echo LANG=C.UTF-8 >"$r/etc/default/locale"

# The ESP is mounted on first access only (nothing at boot needs it).
cat >"$r/etc/fstab" <<EOS
UUID=$root_uuid	/	ext4	rw,discard,errors=remount-ro	0	1
UUID=$esp_uuid	/boot/efi	vfat	umask=0077,noauto,nofail,x-systemd.automount	0	0
EOS
mkdir -p "$r/boot/efi" "$r/boot/grub"

# Both GRUBs (BIOS and UEFI) read this. /vmlinuz and /initrd.img are the symlinks Debian's
# kernel packages keep pointing at the newest kernel (and .old at the previous one), so
# kernel upgrades inside a clone need no update-grub (no GRUB package is installed).
cat >"$r/boot/grub/grub.cfg" <<EOS
# GRUB configuration of the image built by vmthunder's scripts/build-cloud-image.sh.
set default=0
set timeout=1
set timeout_style=hidden
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian GNU/Linux 12' --id debian {
	search --no-floppy --fs-uuid --set=root $root_uuid
	echo 'Loading Linux ...'
	linux /vmlinuz root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200
	echo 'Loading initial ramdisk ...'
	initrd /initrd.img
}
menuentry 'Debian GNU/Linux 12 (previous kernel)' --id debian-old {
	search --no-floppy --fs-uuid --set=root $root_uuid
	linux /vmlinuz.old root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200
	initrd /initrd.img.old
}
EOS

# cloud-init. With a single datasource (and None) ds-identify enables cloud-init without
# probing; NoCloud then finds its seed by label (cidata) on any block device, the CD-ROM
# included, or from ds=nocloud on the kernel command line. Without a seed the None datasource
# still makes host keys and a DHCP configuration for the first NIC.
cat >"$r/etc/cloud/cloud.cfg.d/90_cloud-image.cfg" <<'EOS'
# Written by vmthunder's scripts/build-cloud-image.sh.
datasource_list: [ NoCloud, None ]
system_info:
  network:
    # network-config (v1 or v2) is rendered for systemd-networkd (no netplan, no ifupdown).
    renderers: [ networkd ]
    activators: [ networkd ]
# /etc/hosts maps the hostname from meta-data (sudo then resolves it).
manage_etc_hosts: true
# Host keys: made on every new instance (ssh_deletekeys is on by default). No RSA (nor DSA):
# a 3072-bit RSA key takes 3-6 s under TCG; user-data can ask for it with
# ssh_genkeytypes: [rsa, ecdsa, ed25519] (sshd's default HostKey list has all three).
ssh_genkeytypes: [ ed25519, ecdsa ]
# Modules that can work in this image (no snap, byobu, puppet, chef, landscape, lxd, ...).
cloud_init_modules:
  - migrator
  - seed_random
  - bootcmd
  - write-files
  - growpart
  - resizefs
  - disk_setup
  - mounts
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - ca-certs
  - users-groups
  - ssh
cloud_config_modules:
  - set-passwords
  - apt-pipelining
  - apt-configure
  - locale
  - ntp
  - timezone
  - runcmd
cloud_final_modules:
  - package-update-upgrade-install
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - install-hotplug
  - phone-home
  - final-message
  - power-state-change
EOS

# cloud-init 22.4's networkd renderer writes IPv6AcceptRA= (from v2 accept-ra / v1
# accept-ra) only for DHCPv6 interfaces. Without it, networkd keeps a static-only interface
# "configuring" until its 10 s wait for a router advertisement ends, and cloud-init.service
# (after networkd-wait-online) and everything after it wait too. Written whenever given, as
# netplan does, a static config with accept-ra: false is ready at once. (A cloud-init update
# restores the original file; then accept-ra: false only costs those 10 s again.)
f=$r/usr/lib/python3/dist-packages/cloudinit/net/networkd.py
if grep -q 'if dhcp in \["ipv6", "yes"\] and isinstance($' "$f"; then
    sed -i 's/if dhcp in \["ipv6", "yes"\] and isinstance($/if isinstance(/' "$f"
    chroot "$r" python3 -m py_compile /usr/lib/python3/dist-packages/cloudinit/net/networkd.py
else
    echo "customize: cloud-init's networkd renderer changed; accept-ra left as it is" >&2
fi

chroot "$r" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# cloud-init.service waits for networkd-wait-online: one link up is enough, and a NIC
# without carrier holds the boot for 30 s at most (not the default 2 minutes).
mkdir -p "$r/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$r/etc/systemd/system/systemd-networkd-wait-online.service.d/cloud-image.conf" <<'EOS'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOS
# Debian's sshd does not make missing host keys. cloud-init's ssh module does, in
# cloud-init.service, which deletes the image's keys and makes the instance's: sshd starts
# after it (without the order, sshd raced the regeneration and systemd gave up on it after
# five failed starts, seen on one clone in two). The ExecStartPre covers a boot without
# cloud-init: the same two types, made only when there is no host key at all. A failed start
# is retried without limit: a clone without sshd is useless.
mkdir -p "$r/etc/systemd/system/ssh.service.d"
cat >"$r/etc/systemd/system/ssh.service.d/cloud-image.conf" <<'EOS'
[Unit]
After=cloud-init.service
StartLimitIntervalSec=0
[Service]
Restart=on-failure
RestartSec=2
ExecStartPre=
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || for t in ed25519 ecdsa; do ssh-keygen -q -t $$t -N "" -f /etc/ssh/ssh_host_$${t}_key || exit; done'
ExecStartPre=/usr/sbin/sshd -t
EOS
# Not needed by a short-lived clone, and slow under TCG. systemd-firstboot would prompt on
# the console for a time zone on the first boot (empty machine-id, no /etc/localtime).
for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer man-db.timer systemd-timesyncd.service \
    systemd-firstboot.service; do
    if [ -e "$r/lib/systemd/system/$u" ]; then chroot "$r" systemctl mask "$u" >/dev/null 2>&1; fi
done
# Early loads of modules nothing here needs at boot (each is a modprobe under TCG); their
# /dev nodes (kmod-static-nodes) still load them on first use.
chroot "$r" systemctl mask modprobe@drm.service modprobe@dm_mod.service \
    modprobe@loop.service modprobe@fuse.service >/dev/null 2>&1

# Kernel modules: drop what no VM uses, then a small initramfs (MODULES=most would put every
# storage driver in it, ~36 MB, slow to load under TCG). RESUME=none: no waiting for a swap.
for k in "$r"/lib/modules/*; do
    awk -v prune="$prune" '
        BEGIN { n = split(prune, p, " ") }
        function pruned(m, i) {
            for (i = 1; i <= n; i++) if (index(m, "kernel/" p[i] "/") == 1) return 1
            return 0
        }
        { sub(/:$/, "", $1)
          if (pruned($1)) drop[$1] = 1
          else for (i = 1; i <= NF; i++) keep[$i] = 1 }
        END { for (m in drop) if (!(m in keep)) print m }
    ' "$k/modules.dep" | (cd "$k" && xargs rm -f)
    find "$k/kernel" -depth -type d -empty -delete
    chroot "$r" depmod -a "$(basename "$k")"
done
# FSTYPE: the fsck hook cannot tell the root's type from fstab's UUID= in a chroot.
printf 'MODULES=list\nCOMPRESS=gzip\nFSTYPE=ext4\n' >"$r/etc/initramfs-tools/conf.d/cloud-image.conf"
echo RESUME=none >"$r/etc/initramfs-tools/conf.d/resume"
for m in $initrd_modules; do echo "$m"; done >>"$r/etc/initramfs-tools/modules"
chroot "$r" update-initramfs -u -k all >/dev/null

# Nothing that identifies one machine, and nothing to log in with.
chroot "$r" passwd -l root >/dev/null
rm -f "$r"/etc/ssh/ssh_host_*
: >"$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id" "$r/var/lib/systemd/random-seed"
rm -rf "$r"/var/lib/cloud/* "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
# apt: Debian's defaults again inside the image (mmdebstrap's build options go).
rm -f "$r/etc/apt/apt.conf.d/99mmdebstrap"
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
    "$r"/var/lib/dpkg/*-old "$r"/var/log/apt/* "$r"/var/log/*.log "$r"/var/log/journal/*
EOF

log "mmdebstrap $suite from $sources into $root (several minutes)"
# --hook-dir merged-usr: /usr is merged by mmdebstrap, so apt does not pull in usrmerge (and
# perl with it). The dpkg path-excludes stay in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap).
mmdebstrap --mode=root --variant=apt --components=main \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' \
    --include="$(IFS=,; echo "${pkgs[*]}")" \
    --customize-hook="sh '$work/customize.sh' \"\$1\" '$root_uuid' '$esp_uuid' '${prune_modules[*]}' '${initrd_modules[*]}'" \
    --customize-hook="chroot \"\$1\" dpkg-query -W -f='\${Package} \${Version}\\n' >'$work/packages.txt'" \
    "$suite" "$root" "$sources" >&2

# The disk: 2 GiB, GPT, partitions at fixed sectors (Debian's cloud images' layout).
log "partitioning and making the file systems"
disk=$work/disk.raw
truncate -s 2G "$disk"
sgdisk --clear -a 2048 \
    -n 14:2048:8191 -t 14:EF02 -c 14:bios-boot \
    -n 15:8192:262143 -t 15:EF00 -c 15:efi \
    -n 1:262144:0 -t 1:8300 -c 1:root \
    "$disk" >/dev/null
root_first=262144
root_last=$(sgdisk -i 1 "$disk" | sed -n 's/^Last sector: \([0-9]*\).*/\1/p')
[ -n "$root_last" ] || die "cannot read the root partition's last sector"

truncate -s $(((root_last - root_first + 1) * 512)) "$work/root.ext4"
# No metadata_csum_seed / orphan_file: GRUB 2.06 cannot read the former (and neither is
# Debian 12's default; pinned in case mke2fs.conf says otherwise).
mkfs.ext4 -q -F -L debian-root -U "$root_uuid" -O ^metadata_csum_seed,^orphan_file \
    -E nodiscard -d "$root" "$work/root.ext4"
truncate -s $(((262144 - 8192) * 512)) "$work/esp.vfat"
mkfs.vfat -F 32 -n EFI -i "$esp_id" "$work/esp.vfat" >/dev/null

# GRUB: the same embedded config for both: find the root by UUID, read /boot/grub/grub.cfg
# there. Every module it needs is embedded: of GRUB only grub.cfg is on the root file system.
cat >"$work/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $root_uuid
set prefix=(\$root)/boot/grub
EOF
grub_mods=(part_gpt part_msdos ext2 fat search search_fs_uuid search_label normal configfile
    linux echo test serial terminal terminfo ls cat sleep reboot halt)
grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub \
    biosdisk "${grub_mods[@]}"
grub-mkimage -O x86_64-efi -o "$work/BOOTX64.EFI" -c "$work/early.cfg" -p /boot/grub \
    efi_gop efi_uga "${grub_mods[@]}"
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.vfat" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.vfat" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

dd if="$work/esp.vfat" of="$disk" bs=512 seek=8192 conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$disk" bs=1M seek=$((root_first / 2048)) conv=notrunc,sparse status=none

# GRUB for BIOS, by hand (see the top): core.img at sector 2048, the BIOS boot partition.
# put_le FILE OFFSET NBYTES VALUE: VALUE as a little-endian integer at OFFSET in FILE.
put_le() {
    local hex="" i
    for ((i = 0; i < $3; i++)); do hex+=$(printf '\\x%02x' $((($4 >> (8 * i)) & 255))); done
    # shellcheck disable=SC2059 # the format is the bytes
    printf "$hex" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
core_sectors=$((($(stat -c %s "$work/core.img") + 511) / 512))
[ "$core_sectors" -le 6144 ] || die "core.img ($core_sectors sectors) does not fit the BIOS boot partition"
put_le "$work/core.img" $((0x1f4)) 8 2049          # its blocklist: the rest starts at sector 2049
dd if="$work/core.img" of="$disk" bs=512 seek=2048 conv=notrunc status=none
head -c 440 /usr/lib/grub/i386-pc/boot.img >"$work/mbr.img"
put_le "$work/mbr.img" $((0x5c)) 8 2048            # boot.img loads core.img's first sector
printf '\x90\x90' | dd of="$work/mbr.img" bs=1 seek=$((0x66)) conv=notrunc status=none
dd if="$work/mbr.img" of="$disk" bs=440 count=1 conv=notrunc status=none
verify=$(sgdisk -v "$disk")
case $verify in *"No problems found"*) ;; *) die "sgdisk -v: $verify" ;; esac

log "writing the compressed qcow2"
qemu-img convert -c -O qcow2 "$disk" "$img.tmp.$$"
cp "$work/packages.txt" "$cache/packages.txt"
mv "$img.tmp.$$" "$img"

virtual=$(qemu-img info "$img" | sed -n 's/^virtual size: .*(\([0-9]*\) bytes).*/\1/p')
log "built in $(($(date +%s) - start)) s: virtual size $virtual bytes," \
    "qcow2 file $(stat -c %s "$img") bytes, root file system $(du -sx --block-size=1M "$root" | cut -f1) MiB used"
link

#!/usr/bin/env bash
# Debian guest VMs (scripts/build-linux-guest.sh) booted under QEMU as the hosts of a linux
# stack cluster: real LVM, device-mapper, iSCSI and libvirt, which this machine's kernel lacks.
#
# Each guest boots a qcow2 overlay of the built root file system, with a second disk of 2 GiB
# holding the LVM volume group `vg_vmthunder`, one NIC on a bridge `vmtl-<bed>` of this
# machine (10.<net>.0.1/24) at 10.<net>.0.(10+i), and its name and iSCSI initiator name from
# its kernel command line. Once sshd answers, every guest gets the test clone kernel and
# initrd (target/guest) in /srv/boot/, and the first guest the test image
# (target/guest/base.raw) as /srv/images/base.raw.
#
# Usage:
#   scripts/linux-guests.sh up [-b BED] [-n NET] [-m MIB] HOST...   boot (an existing bed of
#                                                                    that name is removed)
#   scripts/linux-guests.sh down [-b BED]                            stop and remove everything
#   scripts/linux-guests.sh ssh [-b BED] HOST CMD...                 run a command on a guest
#
# BED (default le) is 1-8 lowercase letters and digits, NET (default 61) 1-254, MIB the memory
# of each guest (default 1536). Files in /var/tmp/vmthunder-linux-guests/BED: hosts ("name
# address"), known_hosts, the guests' disks, pid files and serial logs (<host>.log). Root only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
guest=${VMTHUNDER_LINUX_GUEST:-$here/../target/linux-guest}
clone=${VMTHUNDER_GUEST:-$here/../target/guest}
bed=le
net=61
mem=1536
die() { echo "linux-guests: error: $*" >&2; exit 1; }
log() { echo "linux-guests: $*" >&2; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: $0 up|down|ssh [-b BED] ..."
shift
while getopts b:n:m: opt; do
    case $opt in
        b) bed=$OPTARG ;;
        n) net=$OPTARG ;;
        m) mem=$OPTARG ;;
        *) die "unknown option" ;;
    esac
done
shift $((OPTIND - 1))
[[ $bed =~ ^[a-z0-9]{1,8}$ ]] || die "bed name $bed: use 1-8 lowercase letters and digits"
[[ $net =~ ^[0-9]+$ ]] && [ "$net" -ge 1 ] && [ "$net" -le 254 ] || die "net $net: use 1-254"
[ "$(id -u)" = 0 ] || die "root only (a bridge, taps)"

dir=/var/tmp/vmthunder-linux-guests/$bed
br=vmtl-$bed

# ssh_to ADDR CMD...: runs CMD on the guest at ADDR. Once a guest answers, commands share one
# connection per guest (a key exchange costs a TCG guest about 2 s); `down` ends them.
ssh_to() {
    local addr=$1
    shift
    ssh -i "$guest/id_ed25519" -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=5 \
        -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile="$dir/known_hosts" \
        -o ControlMaster=auto -o ControlPath="$dir/mux-%C" -o ControlPersist=300 \
        -o LogLevel=ERROR "root@$addr" "$@"
}

address_of() {
    awk -v h="$1" '$1 == h { print $2 }' "$dir/hosts"
}

down() {
    if [ -d "$dir" ]; then
        for m in "$dir"/mux-*; do
            [ -S "$m" ] || continue
            ssh -o ControlPath="$m" -O exit x >/dev/null 2>&1 || true
        done
        for p in "$dir"/*.pid; do
            [ -e "$p" ] || continue
            pid=$(cat "$p" 2>/dev/null || true)
            if [ -n "$pid" ] && grep -q "$dir" "/proc/$pid/cmdline" 2>/dev/null; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done
    fi
    for t in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep "^vmtl${bed}t" || true); do
        ip link del "${t%@*}" 2>/dev/null || true
    done
    ip link del "$br" 2>/dev/null || true
    rm -rf "$dir"
}

up() {
    [ $# -ge 1 ] || die "name at least one host"
    for f in rootfs.img vmlinuz initrd.img id_ed25519; do
        [ -s "$guest/$f" ] || die "$guest/$f is missing: run scripts/build-linux-guest.sh"
    done
    for f in vmlinuz initrd.img base.raw; do
        [ -s "$clone/$f" ] || die "$clone/$f is missing: run scripts/build-guest.sh"
    done
    down
    mkdir -p "$dir"
    : >"$dir/hosts"
    ip link add "$br" type bridge
    ip addr add "10.$net.0.1/24" dev "$br"
    ip link set "$br" up
    local i=0 h
    for h in "$@"; do
        [[ $h =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "host name $h"
        local addr=10.$net.0.$((10 + i)) tap=vmtl${bed}t$i
        echo "$h $addr" >>"$dir/hosts"
        ip tuntap add dev "$tap" mode tap
        ip link set "$tap" master "$br" up
        qemu-img create -q -f qcow2 -F raw -b "$(cd "$guest" && pwd)/rootfs.img" "$dir/$h.qcow2"
        truncate -s 2G "$dir/$h-vg.raw"
        qemu-system-x86_64 -name "vmtl-$bed-$h" -machine pc,accel=tcg -cpu max -smp 1 -m "$mem" \
            -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
            -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 vmt.name=$h vmt.ip=$addr/24 vmt.gw=10.$net.0.1" \
            -drive "file=$dir/$h.qcow2,if=virtio,format=qcow2,cache=unsafe" \
            -drive "file=$dir/$h-vg.raw,if=virtio,format=raw,cache=unsafe" \
            -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
            -device "virtio-net-pci,netdev=n0,mac=52:54:00:$(printf '%02x' "$net"):00:$(printf '%02x' $((10 + i)))" \
            -display none -serial "file:$dir/$h.log" -monitor none \
            -daemonize -pidfile "$dir/$h.pid"
        i=$((i + 1))
    done
    local deadline=$((SECONDS + 600))
    for h in "$@"; do
        local addr
        addr=$(address_of "$h")
        until ssh_to "$addr" true 2>/dev/null; do
            [ $SECONDS -lt $deadline ] || { tail -n 30 "$dir/$h.log" >&2; die "$h ($addr) did not answer ssh within 600 s"; }
            sleep 2
        done
        log "$h is up at $addr after ${SECONDS}s"
    done
    local first=1
    for h in "$@"; do
        local addr
        addr=$(address_of "$h")
        ssh_to "$addr" 'set -e; mkdir -p /srv/boot /srv/images; pvcreate -q /dev/vdb; vgcreate -q vg_vmthunder /dev/vdb'
        ssh_to "$addr" 'cat >/srv/boot/vmlinuz' <"$clone/vmlinuz"
        ssh_to "$addr" 'cat >/srv/boot/initrd.img' <"$clone/initrd.img"
        if [ $first = 1 ]; then
            ssh_to "$addr" 'cat >/srv/images/base.raw' <"$clone/base.raw"
            first=0
        fi
    done
    log "bed $bed ready: $*"
}

case $cmd in
    up) up "$@" ;;
    down) down ;;
    ssh)
        h=${1:?host}
        shift
        addr=$(address_of "$h")
        [ -n "$addr" ] || die "no host $h in bed $bed"
        ssh_to "$addr" "$@"
        ;;
    *) die "unknown command $cmd" ;;
esac

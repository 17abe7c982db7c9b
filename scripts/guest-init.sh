#!/bin/busybox sh
# /init of the vmthunder test guest (packed into initrd.img by scripts/build-guest.sh).
#
# Boots from the initramfs only; the disk is never mounted. It proves, on the serial console:
#   VMTHUNDER-READY name=<name> uuid=<uuid> mac=<mac> disk_sha256=<hex> disk_bytes=<n>
#     the guest saw its disk (/dev/vda, checksum of the whole device), its NIC and its SMBIOS
#     UUID; the caller compares these with what it provisioned;
#   VMTHUNDER-WROTE name=<name>
#     it wrote "written by <name>" (padded to 4 KiB) to the LAST 4 KiB of /dev/vda, so the caller
#     can check that clone writes stay in the clone's overlay;
# or, on any failure: VMTHUNDER-FAILED name=<name> reason=<word>
# and then idles forever, so the VM keeps running until the caller stops it.
# Kernel command line parameters read: vmthunder.name=NAME (default "unnamed"),
# vmthunder.verbose=1 (keep kernel messages on the console), vmthunder.ip=A.B.C.D/P (the NIC's
# address on a cluster network, vmthunder's `{address}`; the READY line then says ip=A.B.C.D/P,
# and the guest answers ping there).
#
# Churn mode (vmthunder.churn=1, used by tests/tree.rs): instead of the above, the guest prints
# VMTHUNDER-CHURNING name=<name> chunks=<n> and then loops for ever, pausing ~0.1 s per turn: it
# reads the next 64 KiB of /dev/vda (all but its last MiB, which it has not read before, so the
# read goes through the tree), writes a 4 KiB record "churn <name> <turn>" into one of 256 slots
# of the last MiB, and every 16 turns drops its page cache and reads those 16 records back from
# the device. Every 64 turns it prints
#   VMTHUNDER-CHURN name=<name> turn=<k> errors=<e> kernel_errors=<k>
# where errors counts failed reads, writes and records that read back wrong, and kernel_errors
# the kernel's "I/O error" lines; each failure also prints VMTHUNDER-IOERROR name= op= turn=.
#
# Benchmark mode (vmthunder.read_mib=N, used by benches/provision.rs): instead of the above, the
# guest prints VMTHUNDER-WAITING name=<name>, waits until its NIC's link goes down (the host
# says "go" with QMP `set_link`; vmthunder.go=now skips the wait), reads the first N MiB of
# /dev/vda (its boot working set) and prints VMTHUNDER-READ name=<name> mib=<N> as the last
# line it ever writes, so the console file's modification time is when the read finished.

/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
# The console may not have been open when the kernel started /init.
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
name=unnamed
verbose=0
read_mib=
ip=
go=link-down
churn=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmthunder.name=*) name=${arg#vmthunder.name=} ;;
        vmthunder.verbose=1) verbose=1 ;;
        vmthunder.read_mib=*) read_mib=${arg#vmthunder.read_mib=} ;;
        vmthunder.go=now) go=now ;;
        vmthunder.ip=*) ip=${arg#vmthunder.ip=} ;;
        vmthunder.churn=1) churn=1 ;;
    esac
done
# Keep the kernel's own messages off the console so our lines stay whole
# (vmthunder.verbose=1 keeps them, for debugging).
[ "$verbose" = 1 ] || echo 1 > /proc/sys/kernel/printk 2>/dev/null || true

idle() {
    while :; do sleep 3600; done
}

fail() {
    echo
    echo "VMTHUNDER-FAILED name=$name reason=$1"
    idle
}

# Modules in dependency order, listed by build-guest.sh.
if [ -f /lib/modules/load.order ]; then
    while read -r ko; do
        [ -n "$ko" ] || continue
        insmod "/lib/modules/$ko" || fail "insmod-$(basename "$ko" .ko)"
    done < /lib/modules/load.order
fi

# Wait (bounded: 10 s) for the disk and a non-loopback NIC.
nic=
i=0
while [ $i -lt 100 ]; do
    if [ -z "$nic" ]; then
        for n in /sys/class/net/*; do
            n=${n##*/}
            [ "$n" = lo ] || [ "$n" = "*" ] || { nic=$n; break; }
        done
    fi
    [ -b /dev/vda ] && [ -n "$nic" ] && break
    sleep 0.1
    i=$((i + 1))
done
[ -b /dev/vda ] || fail no-disk

mac=none
[ -n "$nic" ] && [ -r "/sys/class/net/$nic/address" ] && mac=$(cat "/sys/class/net/$nic/address")
uuid=none
[ -r /sys/class/dmi/id/product_uuid ] && uuid=$(cat /sys/class/dmi/id/product_uuid)
if [ -n "$ip" ]; then
    [ -n "$nic" ] || fail no-nic
    ip link set lo up 2>/dev/null
    ip link set "$nic" up 2>/dev/null || fail nic-up
    ip addr add "$ip" dev "$nic" 2>/dev/null || fail ip-address
fi

if [ -n "$read_mib" ]; then
    if [ "$go" != now ]; then
        [ -n "$nic" ] || fail no-nic
        ip link set "$nic" up 2>/dev/null || fail nic-up
        carrier() { c=; read -r c < "/sys/class/net/$nic/carrier" 2>/dev/null; }
        # 0.1 s naps without a process each (a fork per nap costs a TCG guest ~7% of a host
        # core while it waits): a read with a timeout on a fifo nobody writes.
        mkfifo /tmp/nap && exec 3<>/tmp/nap || fail nap
        nap() { read -r -t 0.1 -u 3 _; }
        # The link comes up once the driver has it (bounded: 10 s), then down = go.
        i=0
        while carrier && [ "$c" != 1 ] && [ $i -lt 100 ]; do nap; i=$((i + 1)); done
        carrier; [ "$c" = 1 ] || fail no-carrier
        echo
        echo "VMTHUNDER-WAITING name=$name"
        while carrier && [ "$c" = 1 ]; do nap; done
    else
        echo
        echo "VMTHUNDER-WAITING name=$name"
    fi
    dd if=/dev/vda of=/dev/null bs=1M count="$read_mib" 2>/dev/null || fail disk-read
    echo "VMTHUNDER-READ name=$name mib=$read_mib"
    idle
fi

sectors=$(cat /sys/block/vda/size 2>/dev/null) || fail no-disk-size
bytes=$((sectors * 512))
[ "$bytes" -ge 4096 ] || fail disk-too-small

if [ -n "$churn" ]; then
    [ "$bytes" -ge 2097152 ] || fail disk-too-small
    mkfifo /tmp/nap && exec 3<>/tmp/nap || fail nap
    nap() { read -r -t 0.1 -u 3 _; }
    chunks=$(((bytes - 1048576) / 65536))
    first=$(((bytes - 1048576) / 4096))
    record() { { printf 'churn %s %08d\n' "$name" "$1"; head -c 4096 /dev/zero; } | head -c 4096; }
    errors=0
    ioerror() { errors=$((errors + 1)); echo "VMTHUNDER-IOERROR name=$name op=$1 turn=$2"; }
    echo
    echo "VMTHUNDER-CHURNING name=$name chunks=$chunks"
    k=0
    while :; do
        dd if=/dev/vda of=/dev/null bs=65536 skip=$((k % chunks)) count=1 2>/dev/null \
            || ioerror read $k
        record $k > /tmp/rec
        dd if=/tmp/rec of=/dev/vda bs=4096 seek=$((first + k % 256)) count=1 \
            conv=notrunc,fsync 2>/dev/null || ioerror write $k
        if [ $((k % 16)) -eq 15 ]; then
            echo 3 > /proc/sys/vm/drop_caches
            j=$((k - 15))
            while [ $j -le $k ]; do
                record $j > /tmp/want
                dd if=/dev/vda of=/tmp/got bs=4096 skip=$((first + j % 256)) count=1 \
                    2>/dev/null || ioerror reread $j
                cmp -s /tmp/want /tmp/got || ioerror verify $j
                j=$((j + 1))
            done
        fi
        if [ $((k % 64)) -eq 63 ]; then
            kerr=$(dmesg | grep -c 'I/O error')
            echo "VMTHUNDER-CHURN name=$name turn=$k errors=$errors kernel_errors=$kerr"
        fi
        k=$((k + 1))
        nap
    done
fi

sum=$(sha256sum /dev/vda) || fail disk-read
sum=${sum%% *}
[ ${#sum} -eq 64 ] || fail disk-read

# The firmware leaves the cursor mid-line (and "quiet" prints no kernel line after it): start a
# fresh line so the result lines always begin at a line start.
echo
echo "VMTHUNDER-READY name=$name uuid=$uuid mac=$mac disk_sha256=$sum disk_bytes=$bytes${ip:+ ip=$ip}"

# The marker: "written by NAME\n" padded with zero bytes to 4 KiB, into the last 4 KiB
# (8 sectors of 512 bytes, so a size that is not a multiple of 4 KiB works too).
{ echo "written by $name"; head -c 4096 /dev/zero; } | head -c 4096 > /tmp/marker
dd if=/tmp/marker of=/dev/vda bs=512 count=8 seek=$((sectors - 8)) conv=notrunc,fsync \
    2>/dev/null || fail disk-write
sync
echo "VMTHUNDER-WROTE name=$name"

idle

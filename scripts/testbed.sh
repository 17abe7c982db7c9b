#!/usr/bin/env bash
# A test bed of SSH hosts on this machine, for vmthunder's multi-host tests and benchmarks.
#
# Each host gets:
#   - a network namespace `vmtb-<bed>-<host>` with its own address 10.<net>.0.<10+i>/24 on
#     `eth0`, a veth into a bridge that lives in a namespace of its own (`vmtb-<bed>-br`);
#   - an sshd on port 22 of that address, with a host key generated for it, accepting the bed's
#     client key for root;
#   - a mount namespace (inherited by every command run over SSH) in which `/var/lib/vmthunder`,
#     `/srv` and `/tmp` are directories private to that host, so nothing can assume that the
#     control machine and the hosts share files;
#   - optionally a `tbf` rate limit on both directions of its link (`-r 1gbit`).
# This machine reaches the bed at 10.<net>.0.1 (a veth `vmtb-<bed>` in the root namespace).
#
# Usage:
#   scripts/testbed.sh up [-b BED] [-n NET] [-r RATE] HOST...   create (idempotent: an existing
#                                                                 bed of that name is removed)
#   scripts/testbed.sh down [-b BED]                              remove everything of the bed
#   scripts/testbed.sh stop-sshd [-b BED] HOST                    stop a host's sshd (and its
#                                                                 connections)
#   scripts/testbed.sh start-sshd [-b BED] HOST                   start it again
#   scripts/testbed.sh stage-guest [-b BED] [GUEST_DIR]           copy the test guest (default
#                                                                 target/guest) to the hosts:
#                                                                 the image to the first host's
#                                                                 /srv/images/tiny.raw, kernel
#                                                                 and initrd to every other
#                                                                 host's /srv/boot/
#   scripts/testbed.sh spec-ssh [-b BED]                          the JSON `backend.ssh` block
#   scripts/testbed.sh ssh [-b BED] HOST CMD...                   run a command on a host
#
# BED (default `tb`) is 1-8 lowercase letters and digits; NET (default 77) is 1-254. The bed's
# files (keys, known_hosts, the hosts' private directories) are in /var/tmp/vmthunder-testbed/BED:
#   hosts          "name address" per line
#   id_ed25519     the client key;  known_hosts  the hosts' keys at their addresses
#   <host>/var-lib-vmthunder, <host>/srv, <host>/tmp   what the host sees at those paths
# Root only. Every step is bounded in time.
set -euo pipefail

bed=tb
net=77
rate=
die() { echo "testbed: error: $*" >&2; exit 1; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: $0 up|down|stop-sshd|start-sshd|spec-ssh|ssh [-b BED] ..."
shift
while getopts b:n:r: opt; do
    case $opt in
        b) bed=$OPTARG ;;
        n) net=$OPTARG ;;
        r) rate=$OPTARG ;;
        *) die "unknown option" ;;
    esac
done
shift $((OPTIND - 1))
[[ $bed =~ ^[a-z0-9]{1,8}$ ]] || die "bed name $bed: use 1-8 lowercase letters and digits"
[[ $net =~ ^[0-9]+$ ]] && [ "$net" -ge 1 ] && [ "$net" -le 254 ] || die "net $net: use 1-254"
[ "$(id -u)" = 0 ] || die "the test bed needs root (network and mount namespaces)"

dir=/var/tmp/vmthunder-testbed/$bed
prefix=vmtb-$bed
brns=$prefix-br
rootif=$prefix
T="timeout 20"

host_ns() { echo "$prefix-$1"; }
# The bridge-side interface of host number $1 (interface names have at most 15 bytes).
bridge_if() { echo "vb$bed$1"; }

sshd_pid() {
    local f=$dir/$1/sshd.pid
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

start_sshd() {
    local h=$1 ns
    ns=$(host_ns "$h")
    [ -d "$dir/$h" ] || die "no host $h in bed $bed"
    sshd_pid "$h" >/dev/null && return 0
    mkdir -p -m0755 /run/sshd
    rm -f "$dir/$h/sshd.pid"
    # The mount namespace: private directories over the host-visible paths, then sshd, which
    # daemonizes and writes its pid file once it listens.
    $T ip netns exec "$ns" unshare --mount --propagation private sh -c '
        set -e
        d=$1
        mount --bind "$d/var-lib-vmthunder" /var/lib/vmthunder
        mount --bind "$d/srv" /srv
        mount --bind "$d/home" /root
        mount --bind "$d/tmp" /tmp
        exec /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
    ' sh "$dir/$h"
    local i
    for i in $(seq 100); do
        sshd_pid "$h" >/dev/null && return 0
        sleep 0.05
    done
    die "sshd of $h did not start; see $dir/$h/sshd.log"
}

stop_sshd() {
    local h=$1 ns pid
    ns=$(host_ns "$h")
    # The listener and every connection it serves (each is an sshd process in the namespace).
    if [ -e "/run/netns/$ns" ]; then
        for pid in $(ip netns pids "$ns"); do
            case $(cat "/proc/$pid/comm" 2>/dev/null) in sshd) kill -9 "$pid" 2>/dev/null || true ;; esac
        done
    fi
    rm -f "$dir/$h/sshd.pid"
}

down() {
    local ns pid
    for ns in $(ls /run/netns 2>/dev/null | grep "^$prefix-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        $T ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$rootif" 2>/dev/null || true
    if [ -d "$dir" ]; then
        # Processes that left the namespaces behind still hold files here: none should.
        rm -rf "$dir"
    fi
}

up() {
    [ $# -ge 1 ] || die "up needs at least one host name"
    down
    mkdir -p "$dir" /var/lib/vmthunder /srv
    chmod 0700 "$dir"
    ssh-keygen -q -t ed25519 -N '' -C "vmthunder-testbed-$bed" -f "$dir/id_ed25519"
    : > "$dir/hosts"
    : > "$dir/known_hosts"
    $T ip netns add "$brns"
    ip -n "$brns" link add br0 type bridge
    ip -n "$brns" link set br0 up
    ip link add "$rootif" type veth peer name ctl netns "$brns"
    ip -n "$brns" link set ctl master br0 up
    ip addr add "10.$net.0.1/24" dev "$rootif"
    ip link set "$rootif" up
    local i=0 h ns addr
    for h in "$@"; do
        [[ $h =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "host name $h: use lowercase letters, digits, - and _"
        i=$((i + 1))
        ns=$(host_ns "$h")
        addr=10.$net.0.$((10 + i))
        mkdir -p "$dir/$h"/{var-lib-vmthunder,srv,home,tmp}
        chmod 1777 "$dir/$h/tmp"
        ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$dir/$h/host_key"
        cat > "$dir/$h/sshd_config" <<EOF
ListenAddress $addr
Port 22
HostKey $dir/$h/host_key
AuthorizedKeysFile $dir/id_ed25519.pub
PidFile $dir/$h/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
MaxSessions 10
EOF
        $T ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$brns" link add "$(bridge_if $i)" type veth peer name eth0 netns "$ns"
        ip -n "$brns" link set "$(bridge_if $i)" master br0 up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        if [ -n "$rate" ]; then
            tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
            tc -n "$brns" qdisc add dev "$(bridge_if $i)" root tbf rate "$rate" burst 256kb latency 50ms
        fi
        echo "$h $addr" >> "$dir/hosts"
        echo "$addr $(cut -d' ' -f1-2 "$dir/$h/host_key.pub")" >> "$dir/known_hosts"
        start_sshd "$h"
    done
    echo "testbed: $bed up: $i hosts on 10.$net.0.0/24 ($dir/hosts)"
}

case $cmd in
    up) up "$@" ;;
    down) down ;;
    stop-sshd) [ $# = 1 ] || die "stop-sshd HOST"; stop_sshd "$1" ;;
    start-sshd) [ $# = 1 ] || die "start-sshd HOST"; start_sshd "$1" ;;
    stage-guest)
        g=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/guest}
        [ -r "$g/base.raw" ] && [ -r "$g/vmlinuz" ] || die "no test guest in $g: run scripts/setup.sh"
        [ -s "$dir/hosts" ] || die "bed $bed is not up"
        first=1
        while read -r h _; do
            if [ $first = 1 ]; then
                mkdir -p "$dir/$h/srv/images" && cp "$g/base.raw" "$dir/$h/srv/images/tiny.raw"
                first=0
            else
                mkdir -p "$dir/$h/srv/boot" && cp "$g/vmlinuz" "$g/initrd.img" "$dir/$h/srv/boot/"
            fi
        done < "$dir/hosts"
        echo "testbed: staged $g on the hosts of $bed" ;;
    spec-ssh)
        printf '{ "user": "root", "identity_file": "%s", "known_hosts": "%s" }\n' \
            "$dir/id_ed25519" "$dir/known_hosts" ;;
    ssh)
        [ $# -ge 2 ] || die "ssh HOST CMD..."
        h=$1; shift
        addr=$(awk -v h="$h" '$1 == h { print $2 }' "$dir/hosts")
        [ -n "$addr" ] || die "no host $h in bed $bed"
        exec ssh -i "$dir/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
            -o UserKnownHostsFile="$dir/known_hosts" -o StrictHostKeyChecking=yes \
            "root@$addr" "$@" ;;
    *) die "unknown command $cmd" ;;
esac

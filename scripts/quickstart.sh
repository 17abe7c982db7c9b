#!/usr/bin/env bash
# The newcomer's main job: set up this machine (QEMU 10, the tiny test guest, its base image),
# build vmthunder and apply the shipped example on the embedded default stack (qemu, local
# transport): a source host and six hosts in a degree-2 tree of qemu-storage-daemon relays,
# each booting two TCG guests from copy-on-write clones of the image. The clones are on the
# cluster network "lab" (a bridge on this machine with an address in it), so this machine pings
# every clone at the address `vmthunder output` reports.
#
# Usage: bash scripts/quickstart.sh [SPEC]      (default: examples/local.json)
# Afterwards: target/debug/vmthunder destroy -f examples/local.json --auto-approve
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "quickstart: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
bash scripts/setup.sh
cargo build --quiet
bin=target/debug/vmthunder
spec=${1:-examples/local.json}

"$bin" validate -f "$spec"
"$bin" apply -f "$spec" --auto-approve
echo
echo "The guests' ready lines (each read its whole disk through the relay tree):"
grep -h VMTHUNDER-READY .vmthunder/*/*/*/vm-*.log | cut -c1-120 || true
echo
"$bin" output -f "$spec"
echo
echo "Each clone answers at its address on the cluster network:"
for a in $("$bin" output -f "$spec" --json | grep -o '"address": *"[0-9.]*"' | grep -o '[0-9.]*[0-9]'); do
    if busybox ping -c 1 -W 5 "$a" >/dev/null 2>&1; then echo "  $a answers"; else echo "  $a does not answer"; fi
done
echo
echo "Next: $bin plan -f $spec          (no changes)"
echo "      $bin output -f $spec --format ansible-inventory"
echo "      $bin console -f $spec tiny-node01-0"
echo "      $bin destroy -f $spec --auto-approve"

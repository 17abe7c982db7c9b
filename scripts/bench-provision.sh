#!/usr/bin/env bash
# Provisioning-speed benchmark (issue 8): the VMThunder tree against a star and full copies on
# the SSH test bed with tbf-capped links, beside the model's prediction and the lower bound.
#
# Usage (root): scripts/bench-provision.sh
# Environment (see benches/provision.rs): VMTHUNDER_BENCH_HOSTS (default 1,4,8,16,24),
#   _DEGREES (1,2,4,H), _CLONES (2), _RATE (200mbit), _IMAGE_MIB (256), _READ_MIB (64),
#   _MODES (tree,copy-host,copy-clone).
# Output: the table on stdout and in target/bench-provision/table.md; raw numbers in
# target/bench-provision/results.json. The bench removes its test bed (bp) when it ends, also
# on failure; at full size it runs about 90 minutes on a 2-core machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "bench-provision: needs root (network namespaces)" >&2; exit 1; }
bash scripts/build-guest.sh >/dev/null
out=target/bench-provision
mkdir -p "$out"
cargo bench --bench provision | tee "$out/table.md"

#!/usr/bin/env bash
# The newcomer's main job: build vmthunder and run it on the shipped lab example with the
# embedded default stack (qemu, local transport).
#
# Today (core engine): validates the spec, saves a plan to plans/lab.json and shows it.
# The apply step joins here when the qemu backend lands.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "quickstart: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
cargo build --quiet
bin=target/debug/vmthunder
spec=${1:-examples/lab.json}

"$bin" validate -f "$spec"
"$bin" plan -f "$spec" --out plans/lab.json
"$bin" graph -f "$spec" > plans/lab.dot
echo "The resource DAG is in plans/lab.dot (render it with: dot -Tsvg plans/lab.dot > lab.svg)."

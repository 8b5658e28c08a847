#!/bin/bash
# Runs each test binary device/test-NAME.xz (e.g. tests/kernels.rs built with a pending change) on the GPU, GPU
# tests required; arguments are test-name filters. Usage (through `run` with carry ["device"]): bash
# tools/device/kernels.sh [FILTER...]. Run it from a tree without stray untracked templates: the build test reads
# wgsl/ there.
set -u
source tools/device/setup.sh
for t in /tmp/bin/test-*; do
    [ -e "$t" ] || continue
    echo "== $(basename "$t")"
    FLOE_REQUIRE_GPU=1 "$t" "$@" 2>&1 | grep -E 'test result|FAILED|panicked'
done

#!/bin/bash
# Resident 35B-A3B, binaries alternating: warm prefill of 512 and 2,048 tokens, decode, and a 512-token profile.
# Usage (on the GPU machine, through `run` with carry ["device"]): bash tools/device/resident.sh BIN...; BIN NAME
# runs device/NAME.xz with FLOE_TENSOR_CORES=0 (every product in f32), NAME+tc with FLOE_TENSOR_CORES=1 (the
# prefill's dense matmuls on tensor cores, the default on adapters that have them since they measured faster).
set -u
source tools/device/setup.sh
# Runs `floe bench` of binary spec $1 on the model with the other arguments.
bench() {
    local spec=$1 tc=0
    shift
    [ "${spec%+tc}" != "$spec" ] && tc=1
    FLOE_TENSOR_CORES=$tc /tmp/bin/${spec%+tc} bench --model /tmp/m35 --backend gpu "$@" 2>&1
}
for round in 1 2; do
    for b in "$@"; do
        echo "$b 512 #$round: $(bench $b --prompt-tokens 512 --gen-tokens 16 --prefill-runs 4 | grep -E 'again|decode:' | tr -s ' ' | tr '\n' ' ')"
    done
done
for b in "$@"; do
    echo "$b 2048: $(bench $b --prompt-tokens 2048 --gen-tokens 4 --prefill-runs 3 | grep -E 'again' | tr -s ' ')"
    bench $b --prompt-tokens 512 --gen-tokens 8 --profile > "$OUT/profile-${b/+/-}.txt"
    echo "$b profile: $(grep -E 'GPU time per' "$OUT/profile-${b/+/-}.txt" | tr -s ' ' | tr '\n' ' ')"
done

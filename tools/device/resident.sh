#!/bin/bash
# Resident 35B-A3B, binaries alternating: warm prefill of 512 and 2,048 tokens, decode, and a 512-token profile.
# Usage (on the GPU machine, through `run` with carry ["device"]): bash tools/device/resident.sh BIN...
set -u
source tools/device/setup.sh
for round in 1 2; do
    for b in "$@"; do
        echo "$b 512 #$round: $(/tmp/bin/$b bench --model /tmp/m35 --backend gpu --prompt-tokens 512 --gen-tokens 16 --prefill-runs 4 2>&1 | grep -E 'again|decode:' | tr -s ' ' | tr '\n' ' ')"
    done
done
for b in "$@"; do
    echo "$b 2048: $(/tmp/bin/$b bench --model /tmp/m35 --backend gpu --prompt-tokens 2048 --gen-tokens 4 --prefill-runs 3 2>&1 | grep -E 'again' | tr -s ' ')"
    /tmp/bin/$b bench --model /tmp/m35 --backend gpu --prompt-tokens 512 --gen-tokens 8 --profile > "$OUT/profile-$b.txt" 2>&1
    echo "$b profile: $(grep -E 'GPU time per' "$OUT/profile-$b.txt" | tr -s ' ' | tr '\n' ' ')"
done

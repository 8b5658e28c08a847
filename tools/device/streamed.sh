#!/bin/bash
# Streamed 35B-A3B in a 16 GiB memory cgroup (issue 5 (a)), binaries alternating, page cache dropped before each
# run: the disk's rate (`--io-only`, K=8) at the start and the end, decode with read-ahead on and off.
# Usage (on the GPU machine, through `run` with carry ["device"]): bash tools/device/streamed.sh BIN...
set -u
source tools/device/setup.sh
mkdir -p /sys/fs/cgroup/m16 && echo 16G > /sys/fs/cgroup/m16/memory.max && echo $$ > /sys/fs/cgroup/m16/cgroup.procs
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
S="--backend gpu --gpu-mem 4G --cache lfu --ram-mem 10G"
drop; /tmp/bin/$1 bench --model /tmp/m35 --io-only --gen-tokens 16 2>&1 | tail -1
for round in 1 2; do
    for b in "$@"; do
        for pf in on off; do
            drop; r=$(/tmp/bin/$b bench --model /tmp/m35 $S --prompt-tokens 32 --gen-tokens 48 --prefetch $pf 2>&1)
            echo "$b prefetch $pf #$round: $(echo "$r" | grep -o 'decode: .*tok/s') | $(echo "$r" | grep -o 'decode read [^(]*')"
        done
    done
done
drop; /tmp/bin/$1 bench --model /tmp/m35 --io-only --gen-tokens 16 2>&1 | tail -1

# Sourced by the other scripts, on the GPU machine, from the repository root (see README.md here).
# Unpacks the Vulkan loader (device/gl/*.deb), points it at NVIDIA's driver and unpacks every device/NAME.xz binary
# into /tmp/bin/NAME (test-NAME: a test binary, see kernels.sh); makes the 35B-A3B synthetic model once per machine.
for f in device/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json XDG_RUNTIME_DIR=$(mktemp -d)
mkdir -p /tmp/bin
for f in device/*.xz; do
    xz -dc "$f" > "/tmp/bin/$(basename "$f" .xz)" && chmod +x "/tmp/bin/$(basename "$f" .xz)"
done
nvidia-smi --query-gpu=name --format=csv,noheader
first=$(ls /tmp/bin | grep -v '^test-' | head -1)
[ -d /tmp/m35 ] || /tmp/bin/$first synth --preset qwen3.5-35b-a3b --bits 4 /tmp/m35 2>&1 | tail -1

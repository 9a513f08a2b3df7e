#!/usr/bin/env bash
# Runs the harness on a GPU machine that has no Rust toolchain, from a copy of this repository
# without its .git: how the committed GPU results were produced (README, "GPU runs").
#
#   crates/harness/gpu/run_copied_tree.sh BINARY COMMIT OUT_DIR [harness arguments...]
#
# BINARY   a harness built elsewhere with `cargo build --release -p harness --features vulkan`
#          (may be .xz-compressed)
# COMMIT   the commit the tree was copied from; provenance records it as "<COMMIT> (copied tree)"
# OUT_DIR  receives gpu.csv (nvidia-smi's description of the GPU), run.log, and results.tgz (the
#          results without model files and checkpoints, which are too large to carry back)
# Data: data/cifar-10/*.bin as the harness caches them, or their .xz files in $STAGE, unpacked
# here (the harness verifies every batch's md5 before use). Vulkan: the loader packages (.deb)
# in .gl/ are unpacked when the machine has no libvulkan; NVIDIA's driver supplies the ICD.
# $HARNESS_TIMEOUT (seconds) stops the run in time to pack what it has finished.
set -uo pipefail
binary=$1 commit=$2 out=$3
shift 3
unxz() {
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
}
if ! ldconfig -p | grep -q libvulkan.so.1; then
    for deb in .gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
mkdir -p data/cifar-10
for packed in "${STAGE:-/nonexistent}"/*.bin.xz; do
    [ -f "$packed" ] && unxz "$packed" "data/cifar-10/$(basename "$packed" .xz)"
done
case $binary in *.xz) unxz "$binary" /tmp/harness && binary=/tmp/harness ;; esac
chmod +x "$binary"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.csv" 2>&1
HARNESS_COMMIT=$commit ${HARNESS_TIMEOUT:+timeout "$HARNESS_TIMEOUT"} "$binary" "$@" \
    --device vulkan --data-dir data --results-dir /tmp/results --figures-dir /tmp/figures 2>&1 |
    tee "$out/run.log"
status=${PIPESTATUS[0]}
tar czf "$out/results.tgz" -C /tmp/results --exclude='*.safetensors' --exclude=checkpoint \
    --exclude=.lock .
exit "$status"

#!/usr/bin/env bash
# The GPU code path without a GPU: builds the `vulkan` feature and runs tests/generic_path.rs
# through Mesa's software Vulkan driver (lavapipe), which gives wgpu a Vulkan device on the CPU.
# Not part of .ci/run (building burn a second time, with wgpu, would double CI's cold build);
# run it before submitting a change to the method code (crates/sparsevd, runner's train.rs and
# adam.rs). Installs mesa-vulkan-drivers with apt when the driver is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
icd=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
if [ ! -f "$icd" ]; then
    apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
export VK_ICD_FILENAMES=$icd
cargo test -p harness --features vulkan --test generic_path -- --nocapture --test-threads 1 "$@"
